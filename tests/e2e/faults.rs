//! Faults of the machine under the broker: a full disk and a read-only data folder.
//! Leash must fail closed with a clear error, lose nothing it acknowledged, corrupt
//! nothing, and carry on once the fault is gone.
//!
//! The data folder sits on a small tmpfs this test mounts and fills (the tests run as
//! root on this machine kind; if mounting is not allowed the test fails and says so).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{
    BrokerProcess, Reply, ToolServer, audit_verify, leash_binary, policy_dir, post_json,
};

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "this test mounts a tmpfs (needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_path_buf())
    }

    fn remount(&self, mode: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

/// Fills the file system holding `path` until a write fails.
fn fill(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while file.write_all(&chunk).and_then(|()| file.flush()).is_ok() {}
    let _ = file.sync_all();
}

fn integrity(db: &Path) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('pragma integrity_check').fetchone()[0])",
        ])
        .arg(db)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

struct Setup {
    _upstream: ToolServer,
    _policies: tempfile::TempDir,
    root: tempfile::TempDir,
    policies_path: PathBuf,
}

async fn setup() -> Setup {
    let upstream = ToolServer::spawn().await;
    let policies = policy_dir(&upstream);
    Setup {
        policies_path: policies.path().to_path_buf(),
        _upstream: upstream,
        _policies: policies,
        root: tempfile::tempdir().unwrap(),
    }
}

async fn open_task(url: &str, credential: &str) -> Reply {
    post_json(
        &format!("{url}/v1/tasks"),
        Some(credential),
        json!({"purpose": "p", "tools": ["web.search"]}),
    )
    .await
}

async fn call(url: &str, token: &str) -> Reply {
    post_json(
        &format!("{url}/v1/tools/web.search/call"),
        Some(token),
        json!({"query": "x"}),
    )
    .await
}

fn field(reply: &Reply, name: &str) -> String {
    reply.body[name].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_closed_and_recovers_without_corruption() {
    let s = setup().await;
    let disk = Tmpfs::mount(&s.root.path().join("disk"), "24m");
    let data = disk.0.join("data");
    let log = s.root.path().join("broker.log");
    let mut broker = BrokerProcess::start_logged(&s.policies_path, &data, &[], Some(&log)).await;
    let url = broker.url.clone();
    let admin = std::fs::read_to_string(data.join("admin_token")).unwrap();
    let admin = admin.trim();
    let credential = post_json(
        &format!("{url}/v1/agents/bot/credentials"),
        Some(admin),
        json!({}),
    )
    .await;
    let credential = field(&credential, "credential");
    let before = open_task(&url, &credential).await;
    assert_eq!(before.status, 201);
    let (task_id, token) = (field(&before, "task_id"), field(&before, "token"));
    assert_eq!(call(&url, &token).await.status, 200);

    fill(&disk.0.join("filler"));

    // Opening a task needs a durable write: refused, clearly, and no token escapes.
    let refused = open_task(&url, &credential).await;
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.code(), "unavailable");
    assert!(refused.body.get("token").is_none());
    // Calls are refused as soon as their audit records cannot be kept.
    let deadline = Instant::now() + Duration::from_secs(5);
    let first_refusal = loop {
        let reply = call(&url, &token).await;
        if reply.status == 503 {
            break reply;
        }
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(Instant::now() < deadline, "calls went on with a full disk");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(first_refusal.code(), "unavailable");
    assert!(
        first_refusal
            .message()
            .contains("audit log cannot be written"),
        "{first_refusal:?}"
    );
    // A revocation that cannot be made durable is not acknowledged.
    let revoke = post_json(
        &format!("{url}/v1/tasks/{task_id}/revoke"),
        Some(admin),
        json!({}),
    )
    .await;
    assert_eq!(revoke.status, 503, "{revoke:?}");

    // Space again: the audit writer catches up, calls resume, the revoke goes through.
    std::fs::remove_file(disk.0.join("filler")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = call(&url, &token).await;
        if reply.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "calls did not resume after the disk had room again: {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let revoke = post_json(
        &format!("{url}/v1/tasks/{task_id}/revoke"),
        Some(admin),
        json!({}),
    )
    .await;
    assert_eq!(revoke.status, 200, "{revoke:?}");
    assert_eq!(call(&url, &token).await.status, 401);
    assert_eq!(open_task(&url, &credential).await.status, 201);

    // kill -9, restart: the acknowledged revocation held, nothing is corrupt.
    broker.kill9();
    let broker = BrokerProcess::start(&s.policies_path, &data).await;
    assert_eq!(call(&broker.url, &token).await.status, 401);
    drop(broker);
    assert_eq!(integrity(&data.join("leash.db")), "ok");
    let (ok, out) = audit_verify(&data);
    assert!(ok, "{out}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("cannot write audit rows"),
        "the log says why calls were refused:\n{text}"
    );
}

#[tokio::test]
async fn a_read_only_data_folder_refuses_to_start_and_changes_nothing() {
    let s = setup().await;
    let disk = Tmpfs::mount(&s.root.path().join("disk"), "24m");
    let data = disk.0.join("data");
    // A broker with some state, stopped.
    let broker = BrokerProcess::start(&s.policies_path, &data).await;
    let admin = std::fs::read_to_string(data.join("admin_token")).unwrap();
    let admin = admin.trim().to_string();
    let credential = post_json(
        &format!("{}/v1/agents/bot/credentials", broker.url),
        Some(&admin),
        json!({}),
    )
    .await;
    let credential = field(&credential, "credential");
    let task = open_task(&broker.url, &credential).await;
    let token = field(&task, "token");
    drop(broker);
    let snapshot: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&data)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();

    disk.remount("ro");
    let mut child = Command::new(leash_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--policies"])
        .arg(&s.policies_path)
        .arg("--data")
        .arg(&data)
        .env_remove("LEASH_ADMIN_TOKEN")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve kept running on a read-only data folder");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "served from a read-only folder");
    assert!(
        stderr.to_lowercase().contains("read-only") || stderr.contains("readonly"),
        "the error names the cause: {stderr}"
    );
    for (path, bytes) in &snapshot {
        assert_eq!(&std::fs::read(path).unwrap(), bytes, "{path:?} changed");
    }

    // Writable again: the same state, working.
    disk.remount("rw");
    let broker = BrokerProcess::start(&s.policies_path, &data).await;
    assert_eq!(call(&broker.url, &token).await.status, 200);
}
