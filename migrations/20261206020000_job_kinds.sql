-- Every kind of BMC job (issue 21): the parts of issue 21 each widened the list for their own
-- kinds; this names them all, as plinth-core's `JobSpec` does.
alter table jobs drop constraint jobs_kind_check,
    add constraint jobs_kind_check check (kind in (
        'power', 'boot_device', 'identify', 'retire',
        -- virtual media (workers/vmedia.rs)
        'vmedia_boot', 'vmedia_eject',
        -- BIOS settings (workers/bios.rs)
        'bios_apply', 'bios_read',
        -- firmware (workers/firmware.rs)
        'firmware_update', 'firmware_read',
        -- BMC credentials (workers/rotate.rs)
        'rotate_credentials'
    ));
