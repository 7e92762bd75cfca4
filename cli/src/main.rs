//! The `st2kv` binary. Everything, argument parsing included, lives in [`st2kv_cli::run`].

// One thread is plenty: the CLI sends one request at a time and waits for it.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let code = st2kv_cli::run(std::env::args_os()).await;
    std::process::exit(code);
}
