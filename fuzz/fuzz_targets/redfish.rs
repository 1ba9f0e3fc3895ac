//! Redfish: a body a BMC sends, read as each resource plinth reads (service root, collection,
//! system, Ethernet interface, error), and every link in it followed through `bmc_url`:
//! whatever is accepted stays on the BMC's own origin, without user information.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use plinth_bmc::redfish::{Redfish, RedfishConfig};

fn bmc() -> &'static Redfish {
    static BMC: OnceLock<Redfish> = OnceLock::new();
    BMC.get_or_init(|| {
        Redfish::new(RedfishConfig {
            base_url: "https://10.1.0.21:8443".into(),
            username: "root".into(),
            password: "calvin".into(),
            verify_tls: false,
            ca_pem: None,
            system: None,
            timeout: Duration::from_secs(5),
            allow_plain_http: false,
        })
        .expect("a valid BMC")
    })
}

fuzz_target!(|data: &[u8]| {
    plinth_bmc::redfish::fuzzing::bodies(bmc(), data);
});
