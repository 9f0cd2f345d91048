//! Integration tests: each starts a real `supd` in a temporary folder and
//! drives it through `supctl` and the socket, with real child processes.

mod util;

mod cli;
mod deploy;
mod deps_defects;
mod golden;
mod lifecycle;
mod logs;
mod process;
mod protocol;
mod reload;
mod run;
mod server_defects;
mod smoke;
mod survival;
mod ux_defects;
mod verbs;
