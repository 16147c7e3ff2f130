pub mod kernel;
pub mod netlink;
pub mod table;
