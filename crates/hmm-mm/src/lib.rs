//! The software memory manager: the CPU side that HMM mirrors.

pub mod phys;
