"""plinth's schemathesis hooks: crates/plinth-api/tests/contract.rs runs schemathesis with them
(SCHEMATHESIS_HOOKS=schemathesis_hooks). OWN_TOKEN is the name of the token of the run."""

import schemathesis
from schemathesis.openapi.checks import RejectedPositiveData

OWN_TOKEN = "contract-admin"


@schemathesis.hook
def before_call(context, case, kwargs):
    # The run keeps its own token: revoking it would turn the rest of the run into 401s.
    params = case.path_parameters or {}
    if (
        case.method.upper() == "DELETE"
        and case.operation.path.endswith("/tokens/{name}")
        and params.get("name") == OWN_TOKEN
    ):
        params["name"] = OWN_TOKEN + "-kept"


# A request the document's schema admits can still be refused (400) for a rule that JSON Schema
# does not say: one between fields of the request, or about what exists. These codes, and no
# others, may answer a schema-valid request with 400 (docs/api.md, Errors); a code that also
# answers a malformed value only with the words that say it is about another field.
ACROSS_FIELDS = {
    # MachineCreate/MachinePatch: a rack that exists, rack and rack_unit together, the slot
    # inside the rack's height; plain_http against the address's scheme.
    "unknown_rack": None,
    "missing_rack": None,
    "missing_rack_unit": None,
    "rack_slot_out_of_range": None,
    "plain_http_required": None,
    "plain_http_without_http": None,
    # Actions: an agent's outcome only forced, by an admin, with a reason; force only with off.
    "agent_outcome": None,
    "not_forceable": None,
    "reason_required": None,
    "force_needs_off": None,
    # Agent reports: threads against cores; a reason and disk errors only when failed, zeroed
    # bytes within the disk.
    "invalid_inspection": ("cpu.threads at least cpu.cores",),
    "invalid_clean_report": ("more than size_bytes", "a clean with errors", "is for a failed clean"),
    # Subnets: the CIDR's host bits zero; the router and ranges inside it, ranges apart.
    "invalid_cidr": ("has host bits set",),
    "invalid_router": None,
    "range_outside_subnet": None,
    "invalid_range": None,
    "ranges_overlap": None,
    "pool_too_large": None,
    # Images: a firmware for disk images only; what a file holds (a hash, its format) or whether
    # it exists.
    "invalid_firmware": ("is for disk images only",),
    "checksum_mismatch": None,
    "image_file_missing": None,
    "corrupt_image": None,
    "unsupported_image": None,
    # Deploys: an image of the catalog that suits the machine's facts, keys that are keys.
    "unknown_image": None,
    "not_a_disk_image": None,
    "image_arch_mismatch": None,
    "image_firmware_mismatch": None,
    "no_matching_disk": None,
    "disk_too_small": None,
    "invalid_ssh_key": None,
    # Webhooks: a URL's parts beyond what a string schema says (http or https, a host, no user
    # or password, no fragment); event kinds that are names.
    "invalid_url": None,
    "invalid_kind": None,
    # Firmware: exactly one of machines, rack or pool for a rollout; an image that is firmware.
    "invalid_rollout": None,
    "not_firmware": None,
}


def across_fields(case, error):
    code, message = error.get("code"), error.get("message", "")
    if code in ACROSS_FIELDS:
        words = ACROSS_FIELDS[code]
        return words is None or any(w in message for w in words)
    # An IPMI BMC has no URL (a Redfish one may).
    bmc = case.body.get("bmc") if isinstance(case.body, dict) else None
    return (
        code == "invalid_bmc_address"
        and isinstance(bmc, dict)
        and bmc.get("protocol") == "ipmi"
        and "://" in str(bmc.get("address"))
    )


@schemathesis.hook
def filter_failure(context, failure, case, response):
    if isinstance(failure, RejectedPositiveData) and response.status_code == 400:
        # The stateful phase fills a path parameter from a response field that was null.
        if None in (case.path_parameters or {}).values():
            return False
        try:
            error = response.json()["error"]
        except Exception:
            return True
        return not across_fields(case, error)
    return True
