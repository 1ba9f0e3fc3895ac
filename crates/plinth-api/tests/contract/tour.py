"""The README's tour of plinth ("plinth on real hardware"), step by step, through a Python client
generated from plinth's OpenAPI document by openapi-python-client, by someone who never read
the Rust. crates/plinth-api/tests/contract.rs generates the client (the package `plinth_client`)
into a temporary directory and runs this against a live plinth:

    python3 tour.py BASE_URL ADMIN_TOKEN IMAGES_ROOT

What the README leaves to hardware (a machine's PXE boot, its agents' reports) is done here
the way the agents do it, through the same API. Each step names the CLI command it stands for.
"""

import io
import os
import sys

from plinth_client import AuthenticatedClient
from plinth_client.api.allocations import allocate, get_allocation, release_allocation
from plinth_client.api.dhcp import create_subnet, list_leases
from plinth_client.api.events import machine_events
from plinth_client.api.images import delete_image, list_images, register_image, upload_image
from plinth_client.api.jobs import boot_device, list_jobs, power
from plinth_client.api.machines import (
    deploy_machine,
    deploy_progress,
    enroll_machine,
    get_machine,
    list_machines,
    machine_action,
    submit_deploy,
    submit_inspection,
)
from plinth_client.api.pools import list_pools, update_pool
from plinth_client.api.racks import create_rack, get_rack
from plinth_client.api.tokens import create_token
from plinth_client.models import (
    ActionRequest,
    ActionVerb,
    AddressRange,
    AllocationRequest,
    Arch,
    BmcProtocol,
    BmcSpec,
    BootDeviceRequest,
    BootTarget,
    CleanResult,
    CpuFacts,
    DeployProgress,
    DeployReport,
    DeployRequest,
    DiskFacts,
    ErrorBody,
    Firmware,
    FirmwareMode,
    ImageKind,
    ImageRegister,
    InspectionReport,
    JobState,
    MachineCreate,
    MachineState,
    NicFacts,
    NicSpec,
    PoolUpdate,
    PowerOp,
    PowerRequest,
    RackCreate,
    Role,
    SubnetCreate,
    SystemFacts,
    TokenCreate,
    WipeMethod,
)
from plinth_client.types import File

STEPS = 0


def step(what):
    global STEPS
    STEPS += 1
    print(f"== {what}", flush=True)


def ok(resp, status):
    """The parsed answer, which must have come with `status`."""
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.content!r}"
    assert resp.parsed is not None or status == 204, f"{status} but nothing parsed: {resp.content!r}"
    return resp.parsed


def main(base, token, images_root):
    client = AuthenticatedClient(base_url=base, token=token, raise_on_unexpected_status=True)

    # export PLINTH_TOKEN=$(plinth admin create-token --name alice --role admin): the test made
    # the first admin token; an admin makes the next ones over the API.
    step("plinth token create alice --role admin")
    created = ok(create_token.sync_detailed(client=client, body=TokenCreate(name="alice", role=Role.ADMIN)), 201)
    assert created.token.name == "alice" and created.secret
    client = AuthenticatedClient(base_url=base, token=created.secret, raise_on_unexpected_status=True)

    step("plinth rack add r12 --height-u 42 --site ams1 --room a --row 3")
    rack = ok(create_rack.sync_detailed(client=client, body=RackCreate(name="r12", height_u=42, site="ams1", room="a", row="3")), 201)
    assert (rack.name, rack.height_u, rack.site) == ("r12", 42, "ams1")

    step("plinth machine enroll --hostname node-01 --rack r12 --rack-unit 7 --size-u 2 --tag gpu "
         "--nic 52:54:00:12:34:56,ipv4=10.0.0.21 --bmc-protocol redfish --bmc-address 10.1.0.21 "
         "--bmc-username root --bmc-insecure")
    enroll = MachineCreate(
        hostname="node-01",
        rack="r12",
        rack_unit=7,
        size_u=2,
        tags=["gpu"],
        nics=[NicSpec(mac="52:54:00:12:34:56", ipv4="10.0.0.21")],
        bmc=BmcSpec(protocol=BmcProtocol.REDFISH, address="10.1.0.21", username="root", password="calvin", verify_tls=False),
    )
    m = ok(enroll_machine.sync_detailed(client=client, body=enroll), 201)
    assert m.state == MachineState.ENROLLED and m.rack == "r12" and m.bmc.protocol == BmcProtocol.REDFISH
    # The same MAC again: the error body, as the document describes it.
    again = enroll_machine.sync_detailed(client=client, body=MachineCreate(nics=[NicSpec(mac="52-54-00-12-34-56")]))
    assert again.status_code == 409 and isinstance(again.parsed, ErrorBody), again.content
    assert again.parsed.error.code == "duplicate_mac", again.parsed.error.code

    step("plinth machine list; plinth machine list --state enrolled -o json")
    page = ok(list_machines.sync_detailed(client=client), 200)
    assert [x.hostname for x in page.machines] == ["node-01"]
    page = ok(list_machines.sync_detailed(client=client, state=MachineState.ENROLLED), 200)
    machine_id = page.machines[0].id
    assert machine_id == m.id

    step("plinth job list --machine $ID: the BMC check enrollment queued")
    jobs = ok(list_jobs.sync_detailed(client=client, machine=machine_id), 200)
    assert [j.kind for j in jobs.jobs] == ["identify"], [j.kind for j in jobs.jobs]

    step("plinth machine show $ID")
    shown = ok(get_machine.sync_detailed(machine_id, client=client), 200)
    assert shown.hostname == "node-01" and shown.nics[0].ipv4 == "10.0.0.21"

    step("plinth machine power $ID on; plinth machine boot-device $ID pxe --mode uefi")
    job = ok(power.sync_detailed(machine_id, client=client, body=PowerRequest(action=PowerOp.ON)), 202)
    assert job.kind == "power" and job.state == JobState.QUEUED
    job = ok(boot_device.sync_detailed(machine_id, client=client, body=BootDeviceRequest(device=BootTarget.PXE, mode=FirmwareMode.UEFI)), 202)
    assert job.kind == "boot_device"

    step('plinth machine action $ID inspect --reason "new hardware"')
    m = ok(machine_action.sync_detailed(machine_id, ActionVerb.INSPECT, client=client, body=ActionRequest(reason="new hardware")), 200)
    assert m.state == MachineState.INSPECTING and m.state_reason == "new hardware"

    step("the machine PXE-boots the inspection ramdisk; its agent reports the facts")
    report = InspectionReport(
        cpu=CpuFacts(model="AMD EPYC 7313P", cores=16, threads=32),
        memory_mib=131072,
        disks=[DiskFacts(name="sda", size_bytes=480_103_981_056, model="SAMSUNG MZ7LH480", serial="S45PNA0M", rotational=False)],
        nics=[NicFacts(name="eno1", mac="52:54:00:12:34:56", speed_mbps=25000, link=True)],
        system=SystemFacts(vendor="Supermicro", product="AS-1114S-WN10RT", serial="A123", uuid="4c4c4544-0042-3510-8052-b4c04f4a3732"),
        firmware=Firmware.UEFI,
        arch=Arch.X86_64,
    )
    m = ok(submit_inspection.sync_detailed(machine_id, client=client, body=report), 200)
    assert m.state == MachineState.READY

    step("plinth machine events $ID")
    events = ok(machine_events.sync_detailed(machine_id, client=client), 200)
    kinds = [e.kind for e in events.events]
    assert events.events[-1].to_state == MachineState.READY, kinds

    step("plinth allocate --count 1 --tag gpu --min-cpus 16")
    alloc = ok(allocate.sync_detailed(client=client, body=AllocationRequest(count=1, tags=["gpu"], min_cpus=16)), 201)
    assert [x.id for x in alloc.machines] == [machine_id]
    assert alloc.request.min_cpus == 16

    step("plinth image add debian-12 --kind disk-image --firmware uefi --file debian-12.raw.zst")
    data = os.urandom(64 * 1024)
    image = ok(upload_image.sync_detailed(
        "debian-12",
        client=client,
        body=File(payload=io.BytesIO(data), file_name="debian-12.raw", mime_type="application/octet-stream"),
        kind=ImageKind.DISK_IMAGE,
        firmware="uefi",
    ), 201)
    assert image.size == len(data) and image.source == "uploaded"

    step("plinth machine deploy $ID --image debian-12 --hostname web-01 --user-data cloud-init.yaml --ssh-keys ~/.ssh/id_ed25519.pub")
    m = ok(deploy_machine.sync_detailed(machine_id, client=client, body=DeployRequest(
        image="debian-12",
        hostname="web-01",
        user_data="#cloud-config\npackages: [nginx]\n",
        ssh_authorized_keys=["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop"],
    )), 200)
    assert m.state == MachineState.DEPLOYING

    step("the deploy agent streams the image to the disk and reports its progress")
    ok(deploy_progress.sync_detailed(machine_id, client=client, body=DeployProgress(bytes_written=27_600, total_bytes=len(data), bytes_per_sec=1_258_291)), 204)
    step("plinth machine show $ID: \"writing debian-12 to sda: 42%, ...\"")
    shown = ok(get_machine.sync_detailed(machine_id, client=client), 200)
    assert shown.state_reason.startswith("writing debian-12 to sda: 42%"), shown.state_reason
    m = ok(submit_deploy.sync_detailed(machine_id, client=client, body=DeployReport(result=CleanResult.COMPLETE, bytes_written=len(data))), 200)
    assert m.state == MachineState.DEPLOYED

    step("plinth release <allocation-id>: cleaning wipes the disks and the seed")
    released = ok(release_allocation.sync_detailed(alloc.id, client=client), 200)
    assert released.released_at is not None
    assert ok(get_allocation.sync_detailed(alloc.id, client=client), 200).released_at is not None
    assert ok(get_machine.sync_detailed(machine_id, client=client), 200).state == MachineState.CLEANING

    step("plinth pool set default --wipe-method secure; plinth pool list")
    pool = ok(update_pool.sync_detailed("default", client=client, body=PoolUpdate(wipe_method=WipeMethod.SECURE)), 200)
    assert pool.effective_wipe_method == WipeMethod.SECURE
    pools = ok(list_pools.sync_detailed(client=client), 200)
    assert [(p.name, p.wipe_method, p.machines) for p in pools] == [("default", WipeMethod.SECURE, 1)]

    step("plinth subnet add 10.20.0.0/24 --range 10.20.0.100-10.20.0.199 --router 10.20.0.1 --dns 10.20.0.1")
    subnet = ok(create_subnet.sync_detailed(client=client, body=SubnetCreate(
        cidr="10.20.0.0/24",
        ranges=[AddressRange(start="10.20.0.100", end="10.20.0.199")],
        router="10.20.0.1",
        dns_servers=["10.20.0.1"],
    )), 201)
    assert subnet.pool_size == 100

    step("plinth lease list; plinth machine list --state discovered")
    assert ok(list_leases.sync_detailed(client=client), 200) == []
    assert ok(list_machines.sync_detailed(client=client, state=MachineState.DISCOVERED), 200).machines == []

    step("plinth image list; plinth image add ramdisk-kernel --kind kernel --path plinth/vmlinuz")
    os.makedirs(os.path.join(images_root, "plinth"), exist_ok=True)
    with open(os.path.join(images_root, "plinth", "vmlinuz"), "wb") as f:
        f.write(b"\x7fELF not really a kernel")
    kernel = ok(register_image.sync_detailed(client=client, body=ImageRegister(name="ramdisk-kernel", kind=ImageKind.KERNEL, path="plinth/vmlinuz")), 201)
    assert kernel.source == "registered"
    names = sorted(i.name for i in ok(list_images.sync_detailed(client=client), 200))
    assert names == ["debian-12", "ramdisk-kernel"], names

    step("plinth image rm debian-12")
    ok(delete_image.sync_detailed("debian-12", client=client), 200)
    assert [i.name for i in ok(list_images.sync_detailed(client=client), 200)] == ["ramdisk-kernel"]
    assert get_rack.sync_detailed("r12", client=client).parsed.machine_count == 1

    print(f"tour: {STEPS} steps passed", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
