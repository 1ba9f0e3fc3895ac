//! sushy-tools' Redfish emulator (fake driver) as a child process on 127.0.0.1, with or without
//! an htpasswd file. The test command installs sushy-tools into a venv;
//! `PLINTH_SUSHY_EMULATOR` names its `sushy-emulator`. sushy applies power changes after a
//! delay: poll.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The fake system's UUID and its one NIC.
pub const UUID: &str = "27946b59-9e44-4fa7-8e91-f3527a1ef094";
pub const MAC: &str = "52:54:00:12:34:56";

pub fn emulator() -> anyhow::Result<PathBuf> {
    let p = std::env::var_os("PLINTH_SUSHY_EMULATOR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/plinth-venv/bin/sushy-emulator"));
    if !p.exists() {
        bail!(
            "{} not found: the test command installs sushy-tools into a venv",
            p.display()
        );
    }
    Ok(p)
}

pub struct Sushy {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
    tls: bool,
}

/// A CA and a certificate it signed for 127.0.0.1, made with openssl.
pub struct TestCa {
    pub ca_pem: Vec<u8>,
    pub cert: PathBuf,
    pub key: PathBuf,
    _dir: tempfile::TempDir,
}

fn openssl(dir: &std::path::Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()?;
    if !out.status.success() {
        bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

impl TestCa {
    pub fn new() -> anyhow::Result<TestCa> {
        let dir = tempfile::tempdir()?;
        openssl(
            dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=plinth test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        )?;
        let ca_pem = std::fs::read(dir.path().join("ca.pem"))?;
        let mut ca = TestCa {
            ca_pem,
            cert: PathBuf::new(),
            key: PathBuf::new(),
            _dir: dir,
        };
        let (cert, key) = ca.leaf("bmc", "127.0.0.1")?;
        (ca.cert, ca.key) = (cert, key);
        Ok(ca)
    }

    /// The CA certificate's file.
    pub fn ca_file(&self) -> PathBuf {
        self._dir.path().join("ca.pem")
    }

    /// Another certificate of this CA for 127.0.0.1, with the subject `CN=<cn>`: files
    /// `<name>.pem` and `<name>.key`.
    pub fn leaf(&self, name: &str, cn: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let dir = self._dir.path();
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                &key,
                "-out",
                &csr,
            ],
        )?;
        std::fs::write(
            dir.join("ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "ext",
                "-out",
                &pem,
            ],
        )?;
        Ok((dir.join(pem), dir.join(key)))
    }
}

impl Drop for Sushy {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// A bcrypt htpasswd entry's hash, by the venv's python.
fn bcrypt_hash(password: &str) -> anyhow::Result<String> {
    let python = emulator()?.with_file_name("python");
    let out = Command::new(python)
        .args([
            "-c",
            "import bcrypt, sys; print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt()).decode())",
            password,
        ])
        .output()?;
    if !out.status.success() {
        bail!("bcrypt: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

impl Sushy {
    /// Starts the emulator with one system, powered off; `auth`: (user, password) required.
    pub fn start(auth: Option<(&str, &str)>) -> anyhow::Result<Sushy> {
        Sushy::start_with(auth, None)
    }

    /// With `tls`, over HTTPS with that CA's certificate for 127.0.0.1.
    pub fn start_with(auth: Option<(&str, &str)>, tls: Option<&TestCa>) -> anyhow::Result<Sushy> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut conf = format!(
            "SUSHY_EMULATOR_FAKE_DRIVER = True\n\
             SUSHY_EMULATOR_FAKE_SYSTEMS = [{{'uuid': '{UUID}', 'name': 'vm1', 'power_state': 'Off', \
             'nics': [{{'mac': '{MAC}', 'ip': '10.0.0.5'}}]}}]\n\
             SUSHY_EMULATOR_STATE_DIR = '{}'\n\
             SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\n\
             SUSHY_EMULATOR_LISTEN_PORT = {port}\n",
            dir.path().join("state").display()
        );
        if let Some((user, pw)) = auth {
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, format!("{user}:{}\n", bcrypt_hash(pw)?))?;
            conf.push_str(&format!(
                "SUSHY_EMULATOR_AUTH_FILE = '{}'\n",
                file.display()
            ));
        }
        if let Some(ca) = tls {
            conf.push_str(&format!(
                "SUSHY_EMULATOR_SSL_CERT = '{}'\nSUSHY_EMULATOR_SSL_KEY = '{}'\n",
                ca.cert.display(),
                ca.key.display()
            ));
        }
        let conf_file = dir.path().join("conf.py");
        std::fs::write(&conf_file, conf)?;
        let child = Command::new(emulator()?)
            .arg("--config")
            .arg(&conf_file)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log"))?)
            .spawn()
            .context("starting sushy-emulator")?;
        let s = Sushy {
            child,
            port,
            dir,
            tls: tls.is_some(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("sushy-emulator did not start:\n{}", s.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(s)
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// What the emulator wrote to stderr (its request log).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}
