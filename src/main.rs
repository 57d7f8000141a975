//! headend: clustered IKEv2/IPsec VPN head-end.
fn main() {
    eprintln!("headend: under construction");
    std::process::exit(2);
}
