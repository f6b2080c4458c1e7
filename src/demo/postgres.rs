//! A throwaway PostgreSQL: `initdb` into a temporary directory, started on a free
//! loopback port, stopped and removed on drop. Used by `pgtenant demo` and by the
//! test suite. As root, the server runs as the `postgres` user (initdb refuses
//! root). A watchdog process stops the server and removes the directory if this
//! process dies without dropping it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

pub struct TempPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

/// Finds the server binaries: `$PGTENANT_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin`, else `pg_config --bindir`.
pub fn find_bin() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("PGTENANT_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if bin.join("initdb").exists() {
            return Ok(bin);
        }
    }
    bail!(
        "PostgreSQL server binaries (initdb, pg_ctl) not found. Install them with \
         `apt-get install postgresql` (Debian/Ubuntu) or set PGTENANT_PG_BIN to their directory."
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl TempPostgres {
    /// Initialises and starts a server. `hba` lines go before the default
    /// `host all all 127.0.0.1/32 scram-sha-256`.
    pub fn start(hba: &[&str]) -> anyhow::Result<TempPostgres> {
        let bin = find_bin()?;
        let dir = tempfile::Builder::new().prefix("pgtenant-pg-").tempdir()?;
        let as_postgres = is_root();
        let pg = TempPostgres {
            dir,
            bin,
            port: free_port()?,
            as_postgres,
        };
        if as_postgres {
            run(
                Command::new("chown").arg("postgres:").arg(pg.dir.path()),
                "chown",
            )?;
        }
        run(
            pg.command("initdb").args(["-D"]).arg(pg.data()).args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-locale",
            ]),
            "initdb",
        )?;
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nmax_connections = 200\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nlog_min_messages = warning\n",
            pg.port,
            pg.dir.path().display()
        );
        append(&pg.data().join("postgresql.conf"), &conf)?;
        let mut hba_text = String::from("local all all trust\n");
        for line in hba {
            hba_text.push_str(line);
            hba_text.push('\n');
        }
        hba_text.push_str("host all all 127.0.0.1/32 scram-sha-256\n");
        std::fs::write(pg.data().join("pg_hba.conf"), hba_text)?;
        run(
            pg.command("pg_ctl")
                .arg("-D")
                .arg(pg.data())
                .arg("-l")
                .arg(pg.dir.path().join("server.log"))
                .args(["-w", "start"]),
            "pg_ctl start",
        )?;
        pg.spawn_watchdog()?;
        Ok(pg)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// Runs SQL as the superuser over the Unix socket, statement by statement
    /// (as a script, so `CREATE DATABASE` works); returns psql's output
    /// (unaligned, tuples only). Fails on the first SQL error.
    pub fn psql(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        use std::io::Write;
        let mut child = self
            .command("psql")
            .arg("-h")
            .arg(self.dir.path())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
            ])
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running psql")?;
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(sql.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The server's log so far, for test failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Stops the server if this process exits without dropping `self`.
    fn spawn_watchdog(&self) -> anyhow::Result<()> {
        let stop = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {pg_ctl} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            pg_ctl = if self.as_postgres {
                format!(
                    "runuser -u postgres -- {}",
                    self.bin.join("pg_ctl").display()
                )
            } else {
                self.bin.join("pg_ctl").display().to_string()
            },
            data = self.data().display(),
            dir = self.dir.path().display(),
        );
        Command::new("sh")
            .args(["-c", &stop])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the PostgreSQL watchdog")?;
        Ok(())
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn append(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
