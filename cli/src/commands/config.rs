//! `fdfs config tracker|storage|gateway`: print a server's config file with every key, its default and what it
//! means (as `weed scaffold` does). The text is the shipped `deploy/config/<server>.toml`, compiled in: one
//! source for the scaffold and the files the packages install, and a test checks that it starts each server.

/// A server whose config can be printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Server {
    /// `tracker.toml`.
    Tracker,
    /// `storage.toml`.
    Storage,
    /// `gateway.toml`.
    Gateway,
}

/// Flags of `fdfs config`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which server's config.
    pub server: Server,
}

/// The commented config of `server` (the shipped `deploy/config/<server>.toml`).
pub fn text(server: Server) -> &'static str {
    match server {
        Server::Tracker => include_str!("../../../deploy/config/tracker.toml"),
        Server::Storage => include_str!("../../../deploy/config/storage.toml"),
        Server::Gateway => include_str!("../../../deploy/config/gateway.toml"),
    }
}

/// Print the config.
pub fn run(args: &Args) {
    print!("{}", text(args.server));
}
