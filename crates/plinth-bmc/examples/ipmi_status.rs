//! `cargo run --release -p plinth-bmc --example ipmi_status -- HOST:PORT USER PASSWORD [N]`:
//! N times, a whole IPMI exchange as `ipmitool -I lanplus -C 3 ... chassis power status`
//! does it (open a session, read the chassis status, close), and the median time of one.
//! Used by scripts/bench-ipmi.sh; the password is read from the arguments for the benchmark's
//! simulator only.

use std::time::{Duration, Instant};

use plinth_bmc::Bmc;
use plinth_bmc::ipmi::{CipherSuite, Ipmi, IpmiConfig};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, user, password, rest @ ..] = args.as_slice() else {
        return Err("usage: ipmi_status HOST:PORT USER PASSWORD [N]".into());
    };
    let n: usize = rest.first().map_or(Ok(20), |s| s.parse())?;
    let mut times = Vec::with_capacity(n);
    let mut last = None;
    for _ in 0..n {
        let t = Instant::now();
        let bmc = Ipmi::new(IpmiConfig {
            addr: addr.parse()?,
            username: user.clone(),
            password: password.clone(),
            timeout: Duration::from_secs(1),
            retries: 2,
            cipher_suite: CipherSuite::Three,
        });
        last = Some(bmc.power_state().await?);
        bmc.close().await;
        times.push(t.elapsed());
    }
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "power {:?}; median {:.2} ms over {n} (min {:.2}, max {:.2})",
        last.expect("at least one"),
        median.as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    );
    Ok(())
}
