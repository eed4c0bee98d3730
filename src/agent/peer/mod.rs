//! Talking to other devices directly (DESIGN §5): the peer channel over any byte stream,
//! a TCP connection on the LAN or one through the relay.

pub mod channel;
