//! The one error type of the `sysmgr` library.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SysmgrError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigErrors),
    #[error(transparent)]
    Store(#[from] pss::PssError),
    #[error("database: {0}")]
    Db(#[source] sled::Error),
    #[error("codec: {0}")]
    Codec(String),
    #[error(transparent)]
    Notify(#[from] crate::notify::NotifyError),
    #[error(transparent)]
    Spawn(#[from] crate::spawn::SpawnError),
    #[error("{step} {path}: {source}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another sysmgr is already serving {0}")]
    AlreadyRunning(PathBuf),
    #[error("{step}: {source}")]
    Sys {
        step: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error(transparent)]
    Mts(#[from] mts::MtsError),
}
