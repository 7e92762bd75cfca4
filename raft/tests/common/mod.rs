//! Helpers shared by the store's test files.

/// `open` once the previous handle's lock is gone: sled's background flusher holds the directory
/// lock for a moment after the last handle is dropped, which a restarted process would not see
/// (bounded: 5 s).
pub fn retry_locked<T, E: std::fmt::Display>(open: impl Fn() -> Result<T, E>) -> T {
    for _ in 0..50 {
        match open() {
            Ok(v) => return v,
            Err(e) if e.to_string().contains("could not acquire lock") => {
                std::thread::sleep(std::time::Duration::from_millis(100))
            }
            Err(e) => panic!("open: {e}"),
        }
    }
    panic!("the sled lock was still held after 5 s");
}
