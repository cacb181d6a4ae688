//! The node agent with three real processes under one budget smaller than
//! their sum: redis-server (high priority), memcached (normal) and a Python
//! job (low, with a floor). The budget holds, the Python job gives first,
//! the metrics parse with the Prometheus client's own parser, killing the
//! agent leaves the three running on their last limits, and every byte of
//! each is right at the end.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use farmem_tiers::remote::{free_port, BareClient};
use farmem_tiers::{RemoteConfig, RemoteProtocol};

const M: u64 = 1 << 20;
const REDIS_VALUES: u64 = 30_000;
const MEMCACHED_VALUES: u64 = 20_000;

fn farmem() -> Command {
    Command::new(env!("CARGO_BIN_EXE_farmem"))
}

fn have(program: &str, arg: &str) -> bool {
    Command::new(program).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// A 4 KiB value that compresses (text with the key in it), different per key.
fn value(n: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(4096);
    while v.len() < 4096 {
        v.extend_from_slice(format!("value {n} of the agent test, line {} ", v.len() / 40).as_bytes());
    }
    v.truncate(4096);
    v
}

/// A child stopped and reaped when dropped: SIGTERM, which `farmem run`
/// passes on to its program, then SIGKILL after 5 s.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: kill(2) of our own child, not yet reaped.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while self.running() && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

/// The agent's /metrics text.
fn scrape(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}

/// The value of `metric{...comm="COMM"...}` in a scrape.
fn metric(text: &str, metric: &str, comm: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(&format!("{metric}{{")) && l.contains(&format!("comm=\"{comm}\""))).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn connect(protocol: RemoteProtocol, port: u16) -> BareClient {
    let c = match protocol {
        RemoteProtocol::Redis => RemoteConfig::redis("127.0.0.1", port),
        RemoteProtocol::Memcached => RemoteConfig::memcached("127.0.0.1", port),
    };
    let t0 = Instant::now();
    loop {
        match BareClient::connect(&c) {
            Ok(b) => return b,
            Err(e) if t0.elapsed() > Duration::from_secs(20) => panic!("{}:{port} never answered: {e}", protocol.scheme()),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn check_all(c: &mut BareClient, n: u64, what: &str) {
    let mut out = vec![0u8; 8192];
    let t0 = Instant::now();
    for k in 0..n {
        let len = c.get(b"agent:", k, &mut out).unwrap_or_else(|e| panic!("{what} key {k}: {e}"));
        assert!(out[..len] == value(k)[..], "{what}: value {k} came back wrong");
    }
    eprintln!("{what}: {n} values checked in {:.1} s", t0.elapsed().as_secs_f64());
}

/// An agent on `dir/agent.toml` (written from `config`) and `dir/agent.sock`,
/// its metrics on a port of its own, started and answering. Its log is
/// piped: the caller reads it, or [`forward`]s it to the test's output.
fn start_agent(dir: &std::path::Path, config: &str) -> (Proc, std::path::PathBuf, u16) {
    let (file, socket, port) = (dir.join("agent.toml"), dir.join("agent.sock"), free_port().unwrap());
    std::fs::write(&file, config).unwrap();
    let mut agent = Proc(
        farmem()
            .args(["agent", "--config"])
            .arg(&file)
            .arg("--socket")
            .arg(&socket)
            .args(["--metrics", &format!("127.0.0.1:{port}")])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    while !socket.exists() {
        assert!(t0.elapsed() < Duration::from_secs(10) && agent.running(), "the agent did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (agent, socket, port)
}

/// Passes the agent's log on to the test's output (a pipe nobody reads would fill).
fn forward(agent: &mut Proc) {
    let log = agent.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(log).lines().map_while(Result::ok) {
            eprintln!("agent: {line}");
        }
    });
}

#[test]
fn three_processes_share_one_budget_and_low_priority_gives_first() {
    for (p, a) in [("redis-server", "--version"), ("memcached", "-V"), ("python3", "-V")] {
        if !have(p, a) {
            eprintln!("skipped: {p} is not installed (bash .ci/run installs it)");
            return;
        }
    }
    let dir = std::env::temp_dir().join(format!("farmem-agent-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    const BUDGET: u64 = 300 * M;
    let (mut agent, socket, metrics_port) = start_agent(
        &dir,
        &format!(
            "[node]\nbudget = \"{}M\"\n\n[[rule]]\nname = \"cache\"\ncommand = \"redis-server\"\npriority = \"high\"\n\n[[rule]]\nname = \"sessions\"\ncommand = \"memcached\"\n\n[[rule]]\nname = \"batch\"\nlabel = \"batch\"\npriority = \"low\"\nmin = \"32M\"\n",
            BUDGET / M
        ),
    );
    forward(&mut agent);
    let under_agent = |label: Option<&str>| {
        let mut c = farmem();
        c.args(["run", "--agent"]).arg(&socket);
        if let Some(l) = label {
            c.args(["--label", l]);
        }
        c.arg("--");
        c
    };
    let (redis_port, memcached_port) = (free_port().unwrap(), free_port().unwrap());
    let mut redis = Proc(
        under_agent(None)
            .args(["redis-server", "--port", &redis_port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    );
    let mut mc = under_agent(None);
    mc.args(["memcached", "-p", &memcached_port.to_string(), "-l", "127.0.0.1", "-U", "0", "-M", "-m", "1024", "-t", "2"]);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        mc.args(["-u", "root"]);
    }
    let mut memcached = Proc(mc.stdout(Stdio::null()).spawn().unwrap());
    // The job: 160 MiB it fills, checks on a line from stdin, and prints the verdict.
    let job = "import hashlib, sys\n\
               x = bytearray(160 << 20)\n\
               for i in range(0, len(x), 4096): x[i:i+4096] = ((b'block %d of the batch job ' % i) * 200)[:4096]\n\
               sum1 = hashlib.sha256(x).hexdigest()\n\
               print('ready', flush=True)\n\
               sys.stdin.readline()\n\
               print('same' if hashlib.sha256(x).hexdigest() == sum1 else 'DIFFERENT', flush=True)\n";
    let mut python = Proc(under_agent(Some("batch")).args(["python3", "-c", job]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap());
    let mut job_out = BufReader::new(python.0.stdout.take().unwrap());
    // Load both servers with values that compress.
    let mut r = connect(RemoteProtocol::Redis, redis_port);
    for k in 0..REDIS_VALUES {
        r.set(b"agent:", k, &value(k)).unwrap();
    }
    let mut m = connect(RemoteProtocol::Memcached, memcached_port);
    for k in 0..MEMCACHED_VALUES {
        m.set(b"agent:", k, &value(k)).unwrap();
    }
    let mut line = String::new();
    job_out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    // The budget holds, and the low-priority job gave first.
    let t0 = Instant::now();
    let text = loop {
        let text = scrape(metrics_port).unwrap_or_default();
        let resident: Vec<Option<f64>> = ["redis-server", "memcached", "python3"].iter().map(|c| metric(&text, "farmem_resident_bytes", c)).collect();
        // The budget is RAM: the three's RSS, compressed tiers and all.
        let rss: Option<f64> = ["redis-server", "memcached", "python3"].iter().map(|c| metric(&text, "farmem_rss_bytes", c)).sum();
        if let ([Some(r), Some(m), Some(p)], Some(rss)) = (&resident[..], rss) {
            let (r, m, p) = (*r, *m, *p);
            let sum = rss as u64;
            let py_limit = metric(&text, "farmem_limit_bytes", "python3");
            eprintln!("{:.1} s: resident redis {:.0} MiB, memcached {:.0} MiB, python {:.0} MiB (limit {:?}), RSS of the three {} MiB of {} MiB", t0.elapsed().as_secs_f64(), r / M as f64, m / M as f64, p / M as f64, py_limit.map(|l| l as u64 / M), sum / M, BUDGET / M);
            // The job took memory while it filled and hashed its heap (it
            // stalled, the servers were idle); calm again, it gives it back.
            let below = |c| py_limit.is_some_and(|l| metric(&text, "farmem_limit_bytes", c).map_or(true, |o| o > l));
            if sum <= BUDGET + BUDGET / 20 && below("redis-server") && below("memcached") && p < (120 * M) as f64 {
                break text;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(90), "the budget did not hold with the low-priority job squeezed first within 90 s:\n{text}");
        assert!(redis.running() && memcached.running() && python.running(), "a process died");
        std::thread::sleep(Duration::from_millis(500));
    };
    let limit = |c| metric(&text, "farmem_limit_bytes", c);
    let py = limit("python3").unwrap();
    assert!(py >= (32 * M) as f64 && py < (160 * M) as f64, "the job's limit {py} is not between its min and its need");
    for c in ["redis-server", "memcached"] {
        assert!(limit(c).map_or(true, |l| l > py), "{c} ({:?}) gave before the low-priority job ({py})", limit(c));
    }
    assert!(metric(&text, "farmem_resident_bytes", "python3").unwrap() < (120 * M) as f64, "the job kept its heap:\n{text}");
    // The Prometheus client's own parser reads every family (from the
    // first Python that has it: Debian's python3-prometheus-client is not on
    // another Python's path).
    let parse = |python: &str| {
        Command::new(python)
            .args([
                "-c",
                "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\nfams = list(p(sys.stdin.read()))\nprint(len(fams), sum(len(f.samples) for f in fams))",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin.take().unwrap().write_all(text.as_bytes())?;
                c.wait_with_output()
            })
            .ok()
    };
    let parsed = ["python3", "/usr/bin/python3"].iter().filter_map(|p| parse(p)).find(|o| !String::from_utf8_lossy(&o.stderr).contains("No module named 'prometheus_client'"));
    match parsed {
        None => eprintln!("skipped the parser check: no Python here has prometheus_client (bash .ci/run installs it)"),
        Some(parsed) => {
            let err = String::from_utf8_lossy(&parsed.stderr);
            assert!(parsed.status.success(), "the Prometheus parser refused the metrics: {err}\n{text}");
            let out = String::from_utf8_lossy(&parsed.stdout);
            let (families, samples): (usize, usize) = out.trim().split_once(' ').map(|(a, b)| (a.parse().unwrap(), b.parse().unwrap())).unwrap();
            eprintln!("the Prometheus parser read {families} families, {samples} samples");
            assert!(families >= 10 && samples >= 3 * 7, "{out}");
        }
    }
    // The agent dies: the three run on, their limits kept, and every byte is right.
    let _ = agent.0.kill();
    let _ = agent.0.wait();
    std::thread::sleep(Duration::from_secs(3));
    assert!(redis.running() && memcached.running() && python.running(), "a process died with the agent");
    check_all(&mut r, REDIS_VALUES, "redis");
    check_all(&mut m, MEMCACHED_VALUES, "memcached");
    let t0 = Instant::now();
    python.0.stdin.take().unwrap().write_all(b"check\n").unwrap();
    let mut verdict = String::new();
    job_out.read_line(&mut verdict).unwrap();
    eprintln!("the job hashed its heap again in {:.1} s", t0.elapsed().as_secs_f64());
    assert_eq!(verdict.trim(), "same", "the job's heap changed");
    drop((redis, memcached, python));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_config_is_one_line_naming_line_and_field() {
    let dir = std::env::temp_dir().join(format!("farmem-agent-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("agent.toml");
    std::fs::write(&config, "[node]\nbudget = \"1G\"\n\n[[rule]]\nname = \"x\"\ncommand = \"x\"\npriority = \"urgent\"\n").unwrap();
    let out = farmem().args(["agent", "--metrics", "none", "--config"]).arg(&config).arg("--socket").arg(dir.join("s")).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 7") && err.contains("rule[1].priority") && err.trim().lines().count() == 1, "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_process_that_exits_leaves_the_metrics_and_a_bad_reload_keeps_the_config() {
    if !have("python3", "-V") {
        eprintln!("skipped: python3 is not installed");
        return;
    }
    let dir = std::env::temp_dir().join(format!("farmem-agent-exit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut agent, socket, port) = start_agent(&dir, "[node]\nbudget = \"1G\"\n\n[[rule]]\nname = \"job\"\nlabel = \"job\"\nmax = \"48M\"\n");
    let config = dir.join("agent.toml");
    let mut agent_log = BufReader::new(agent.0.stderr.take().unwrap());
    let job = "import sys\nx = bytearray(96 << 20)\nfor i in range(0, len(x), 4096): x[i] = 1\nprint('ready', flush=True)\nsys.stdin.readline()\n";
    let mut python = Proc(
        farmem().args(["run", "--label", "job", "--agent"]).arg(&socket).args(["--", "python3", "-c", job]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap(),
    );
    let mut out = BufReader::new(python.0.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    // Its rule's max is its limit: the whole heap does not fit under it.
    let wait_for = |what: &str, ok: &dyn Fn(&str) -> bool| {
        let t0 = Instant::now();
        loop {
            let text = scrape(port).unwrap_or_default();
            if ok(&text) {
                return text;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "{what} within 30 s:\n{text}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_for("the job's limit is its max", &|t| metric(t, "farmem_limit_bytes", "python3") == Some((48 * M) as f64));
    // `farmem stat` with no pid lists it.
    let stat = farmem().arg("stat").args(["--interval", "0.1"]).output().unwrap();
    let stat_out = String::from_utf8_lossy(&stat.stdout);
    let pid = python.0.id();
    assert!(stat.status.success() && stat_out.lines().any(|l| l.contains("python3")), "farmem stat (pid {pid}'s child):\n{stat_out}");
    // A bad file while it runs: one line, and the running rules stay.
    std::fs::write(&config, "[node]\nbudget = \"1G\"\n\n[[rule]]\nname = \"job\"\nlabel = \"job\"\nmax = \"a lot\"\n").unwrap();
    let t0 = Instant::now();
    let mut log = String::new();
    while !log.contains("the running configuration stays") {
        log.clear();
        agent_log.read_line(&mut log).unwrap();
        assert!(t0.elapsed() < Duration::from_secs(10), "no line about the bad file");
    }
    assert!(log.contains("line 7") && log.contains("rule[1].max"), "{log}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(metric(&scrape(port).unwrap(), "farmem_limit_bytes", "python3"), Some((48 * M) as f64), "the limit changed after a bad reload");
    // The job exits: gone from the next scrapes.
    python.0.stdin.take().unwrap().write_all(b"done\n").unwrap();
    assert!(python.0.wait().unwrap().success());
    wait_for("the job is gone from the metrics", &|t| t.contains("farmem_node_processes") && metric(t, "farmem_resident_bytes", "python3").is_none());
    drop(agent);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_process_already_under_farmem_is_adopted_through_its_statistics_socket() {
    if !have("python3", "-V") {
        eprintln!("skipped: python3 is not installed");
        return;
    }
    let dir = std::env::temp_dir().join(format!("farmem-agent-adopt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Started without --agent: it only serves its statistics socket.
    let job = "import sys\nx = bytearray(96 << 20)\nfor i in range(0, len(x), 4096): x[i] = 1\nprint('ready', flush=True)\nsys.stdin.readline()\nprint(sum(x[::4096]), flush=True)\n";
    let mut python = Proc(farmem().args(["run", "--limit", "64M", "--label", "adoptme", "--", "python3", "-c", job]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap());
    let mut out = BufReader::new(python.0.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let config = "[node]\nbudget = \"1G\"\nadopt = true\n\n[[rule]]\nname = \"adopted\"\nlabel = \"adoptme\"\n";
    let (mut agent, _, port) = start_agent(&dir, &format!("{config}max = \"40M\"\n"));
    forward(&mut agent);
    let t0 = Instant::now();
    loop {
        let text = scrape(port).unwrap_or_default();
        let (limit, resident) = (metric(&text, "farmem_limit_bytes", "python3"), metric(&text, "farmem_resident_bytes", "python3"));
        // The shim took the limit: its heap went under it.
        if limit == Some((40 * M) as f64) && resident.is_some_and(|r| r <= (42 * M) as f64) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "the job was not adopted and held to 40M within 30 s:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Its own statistics say which limit is in force: the agent's, and
    // none once the agent lifts it (not the 64M it was started with).
    let pid = scrape(port).unwrap().lines().find(|l| l.starts_with("farmem_limit_bytes{") && l.contains("comm=\"python3\"")).and_then(|l| l.split("pid=\"").nth(1)?.split('"').next().map(str::to_owned)).unwrap();
    let stat_limit = || -> serde_json::Value {
        let out = farmem().args(["stat", &pid, "--json"]).output().unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["limit_bytes"].clone()
    };
    assert_eq!(stat_limit(), serde_json::json!(40 * M));
    std::fs::write(dir.join("agent.toml"), config).unwrap();
    let t0 = Instant::now();
    while !stat_limit().is_null() {
        assert!(t0.elapsed() < Duration::from_secs(15), "the lifted limit still shows as {}", stat_limit());
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(agent);
    python.0.stdin.take().unwrap().write_all(b"done\n").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), ((96 << 20) / 4096).to_string(), "the job's heap came back wrong");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Two jobs under a budget for a bit more than one: a low-priority one
/// that reads its heap at random all the time, and an idle high-priority
/// one. By priority alone the busy job would be held at a quarter of its
/// heap; its stall makes it take memory from the idle one instead, whose
/// pages cost nothing to take.
#[test]
fn a_busy_low_priority_process_takes_memory_from_an_idle_high_priority_one() {
    if !have("python3", "-V") {
        eprintln!("skipped: python3 is not installed");
        return;
    }
    let dir = std::env::temp_dir().join(format!("farmem-agent-stall-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut agent, socket, port) = start_agent(
        &dir,
        "[node]\nbudget = \"160M\"\n\n[[rule]]\nname = \"svc\"\nlabel = \"svc\"\npriority = \"low\"\n\n[[rule]]\nname = \"idle\"\nlabel = \"idle\"\npriority = \"high\"\n",
    );
    forward(&mut agent);
    let stop = dir.join("stop");
    let job = |busy: bool| {
        format!(
            "import os, random\nx = bytearray(128 << 20)\nfor i in range(0, len(x), 4096): x[i:i+4096] = ((b'page %d ' % i) * 600)[:4096]\nprint('ready', flush=True)\nr = random.Random(3)\nwhile not os.path.exists({stop:?}):\n    if {busy}:\n        for _ in range(20000): x[r.randrange(len(x) >> 12) << 12]\n    else:\n        import time; time.sleep(0.2)\nprint(sum(x[::4096]), flush=True)\n",
            stop = stop.display().to_string(),
            busy = if busy { "True" } else { "False" }
        )
    };
    let start = |label: &str, busy: bool| {
        let mut p = Proc(farmem().args(["run", "--label", label, "--agent"]).arg(&socket).args(["--", "python3", "-c", &job(busy)]).stdout(Stdio::piped()).spawn().unwrap());
        let mut out = BufReader::new(p.0.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        (p, out)
    };
    let (svc, mut svc_out) = start("svc", true);
    let (idle, mut idle_out) = start("idle", false);
    let pids = |text: &str| -> Vec<(String, f64)> {
        text.lines()
            .filter(|l| l.starts_with("farmem_resident_bytes{"))
            .map(|l| (l.split("name=\"").nth(1).unwrap_or("").split('"').next().unwrap_or("").to_owned(), l.rsplit(' ').next().unwrap().parse().unwrap()))
            .collect()
    };
    let t0 = Instant::now();
    loop {
        let text = scrape(port).unwrap_or_default();
        let r = pids(&text);
        let get = |n: &str| r.iter().find(|(name, _)| name == n).map(|x| x.1);
        if let (Some(s), Some(i)) = (get("svc"), get("idle")) {
            eprintln!("{:.1} s: svc {:.0} MiB, idle {:.0} MiB", t0.elapsed().as_secs_f64(), s / M as f64, i / M as f64);
            // By priority: idle 128 MiB, svc 32 MiB.
            if s >= (104 * M) as f64 && i <= (60 * M) as f64 {
                break;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "the stalling job was not given memory back within 60 s:\n{text}");
        std::thread::sleep(Duration::from_millis(500));
    }
    std::fs::write(&stop, "").unwrap();
    let want = ((0..(128u64 << 20)).step_by(4096).map(|i| format!("page {i} ").as_bytes()[0] as u64).sum::<u64>()).to_string();
    for (mut p, out) in [(svc, &mut svc_out), (idle, &mut idle_out)] {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), want, "a job's heap came back wrong");
        assert!(p.0.wait().unwrap().success());
    }
    drop(agent);
    std::fs::remove_dir_all(&dir).unwrap();
}
