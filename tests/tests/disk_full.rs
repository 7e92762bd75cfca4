//! A node whose data dir runs low on space refuses writes with a definite 507 instead of crashing
//! or hanging, keeps serving reads, and accepts writes again on its own once space returns.
//! Runs the node's data dir on a small tmpfs, so it needs root (CI runs as root).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use st2kv_api::{Client, GetOptions, KeyValuePairRequest};
use st2kv_tests::bin;

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn free_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut st) }, 0);
    st.f_bavail as u64 * st.f_frsize as u64
}

async fn put_status(client: &Client, name: &str) -> Result<(), st2kv_api::ClientError> {
    client.keys().set(&KeyValuePairRequest::new(name, "v")).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_clearly_keeps_reads_and_recovers_by_itself() {
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI must run this test as root");
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let ok =
        Command::new("mount").args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"]).arg(&mnt).status().unwrap();
    assert!(ok.success(), "mount tmpfs");
    let _guard = Mount(mnt.clone());

    let port = |_: ()| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (api, auth, peer) = (port(()), port(()), port(()));
    let mut node = Command::new(bin("st2kv-node"))
        .arg("--data-dir")
        .arg(mnt.join("data"))
        .args(["--api-bind", &format!("127.0.0.1:{api}"), "--auth-bind", &format!("127.0.0.1:{auth}")])
        .args(["--peer-bind", &format!("127.0.0.1:{peer}"), "--insecure-no-auth", "--min-free-mb", "16"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = Client::new(&[format!("http://127.0.0.1:{api}")]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while put_status(&client, "before").await.is_err() {
        assert!(Instant::now() < deadline, "node never accepted a write");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Fill the file system to within 8 MiB of full: below the 16 MiB reserve.
    let filler = mnt.join("filler");
    let size = free_bytes(&mnt).saturating_sub(8 << 20) as usize;
    std::fs::write(&filler, vec![0u8; size]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let err = loop {
        match put_status(&client, "during").await {
            Err(e) => break e,
            Ok(()) => {
                assert!(Instant::now() < deadline, "writes were never refused");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(err.status(), Some(507), "{err}");
    assert!(err.to_string().contains("below its reserve of 16 MiB"), "{err}");
    // Reads keep working.
    assert_eq!(client.keys().get("before", &GetOptions::default()).await.unwrap().value, "v");
    assert!(client.keys().list(&Default::default()).await.is_ok());

    // Space returns: writes resume on their own, and the node never went down.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while put_status(&client, "after").await.is_err() {
        assert!(Instant::now() < deadline, "writes did not resume when space returned");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(node.try_wait().unwrap().is_none(), "the node is still running");
    let _ = node.kill();
    let _ = node.wait();
}
