//! `e2ee-ca-admin`: the admin CLI's binary; everything but the process plumbing is in the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    let environment = |name: &str| std::env::var(name).ok();
    let code = e2ee_ca_admin::run(
        std::env::args_os(),
        &environment,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    ExitCode::from(code)
}
