//! plinth-bmc's integration tests: the Redfish and IPMI drivers against real emulators (the
//! test kit's, sushy-tools', OpenIPMI's ipmi_sim) and a virtual BMC of a QEMU machine.

mod bios;
mod credentials;
mod firmware;
mod health;
mod ipmi_emulator;
mod ipmi_sim;
mod redfish_emulator;
mod sol;
mod sol_emulator;
mod sushy;
mod vbmc;
mod vmedia;
mod vmedia_vm;
