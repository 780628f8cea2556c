//! The sans-IO boundary of the runtime: the control plane, the agreement, the epoch lifecycle,
//! the fault report, the state decision, the link and straggler arithmetic and the simulator
//! touch no socket, clock, thread, file or OS randomness. Time and inputs come in as arguments; `driver.rs` and `group.rs` do the IO.

#[test]
fn core_modules_do_no_io() {
    let core = [
        ("plane.rs", include_str!("../src/plane.rs")),
        ("agreement.rs", include_str!("../src/agreement.rs")),
        ("lifecycle.rs", include_str!("../src/lifecycle.rs")),
        ("report.rs", include_str!("../src/report.rs")),
        ("state.rs", include_str!("../src/state.rs")),
        ("control.rs", include_str!("../src/control.rs")),
        ("rtt.rs", include_str!("../src/rtt.rs")),
        ("straggler.rs", include_str!("../src/straggler.rs")),
        ("sim/mod.rs", include_str!("../src/sim/mod.rs")),
        ("sim/front.rs", include_str!("../src/sim/front.rs")),
        ("sim/world.rs", include_str!("../src/sim/world.rs")),
    ];
    let forbidden = [
        "tokio::",
        "UdpSocket",
        "TcpListener",
        "TcpStream",
        "Instant::now",
        "SystemTime::now",
        "thread_rng",
        "rand::rng()",
        "SystemRandom",
        "std::thread",
        "std::fs",
        "std::env",
    ];
    for (file, text) in core {
        for word in forbidden {
            assert!(!text.contains(word), "{file} mentions {word}");
        }
    }
}
