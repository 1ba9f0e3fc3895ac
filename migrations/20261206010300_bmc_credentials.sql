-- BMC credential rotation (issue 21, part 4). A new password is staged, encrypted with the same
-- AEAD as the current one (the machine id as associated data), and committed before the BMC is
-- asked to take it; after a crash at any step, whichever of the two logs in is the truth
-- (plinth-core's workers/rotate.rs). The staged secret is whole or absent.
alter table bmcs
    add column staged_password_nonce bytea check (length(staged_password_nonce) = 12),
    add column staged_password_ciphertext bytea,
    add column staged_at timestamptz,
    -- the last time plinth set a password of its own (null: the one a person gave)
    add column password_rotated_at timestamptz,
    add constraint bmcs_staged_whole check (
        (staged_password_nonce is null) = (staged_password_ciphertext is null)
        and (staged_password_nonce is null) = (staged_at is null));

-- the rotation is a job of its own (other parts of issue 21 add kinds too: the list below must
-- name every kind of the migrations before it)
alter table jobs drop constraint jobs_kind_check,
    add constraint jobs_kind_check
        check (kind in ('power', 'boot_device', 'identify', 'retire', 'rotate_credentials'));
