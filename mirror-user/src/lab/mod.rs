//! A throw-away lab of network namespaces and veth pairs, for `mirror demo`
//! and the end-to-end tests: uniquely named, deleted on drop (also when a test
//! panics), and never touching the machine's own interfaces.
//!
//! ```text
//!  ns gen            ns src (mirror runs here)            ns sink
//!  gen0 ─────veth───── feed0  [XDP tap]   tgt0 ─────veth───── sink0
//! ```

//!
//! - [`netns`]: namespaces, veth pairs and the standard three-namespace [`Lab`];
//! - [`capture`]: raw packet sockets to send frames and capture what arrives;
//! - [`process`]: bounded processes in a namespace, the daemon among them;
//! - [`tmpfs`]: small file systems for disk-full and budget tests;
//! - [`traffic`]: marked test frames; [`stream`]: real UDP/TCP streams.
//!
//! It stands beside the command line: it may use everything in the crate
//! (the control client, interface lookups); nothing in the data path uses it.

pub mod capture;
pub mod netns;
pub mod process;
pub mod stream;
pub mod tmpfs;
pub mod traffic;

pub use capture::{packet_socket, send_frames, Capture};
pub use netns::{gro_on, ip, veth, vxlan_decap, wire, wire6, Lab, Netns, TempDir};
pub use process::{DaemonProcess, Process};
pub use tmpfs::Tmpfs;
