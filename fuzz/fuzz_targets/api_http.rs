//! The API socket's protocol and request handling, without a socket: HTTP
//! framing (`ember::api::Connection`), routing, JSON bodies and the
//! pre-boot / running / paused state machine (`ember::api::Controller`
//! over the recording `FakeVm`), and the `--config-file` reader.
//!
//! Input: the first byte picks the mode and the limits.
//! * Bit 0 clear, **wire mode**: the rest is a sequence of operations, each
//!   one byte `op`: 0 = the peer reads everything sent so far; 1 = the
//!   request timeout fires; 2 = the peer ends its input; 3..=255 = the next
//!   `op - 2` bytes arrive from the peer. After each, the connection
//!   answers what it can.
//! * Bit 0 set, **request mode**: a sequence of requests, each a route byte
//!   (an index into `ROUTES`, the last ones being odd methods and paths,
//!   and one that reads the body as a config file) and a u16-length body.
//!   Bit 1 set: the fake VM's first start fails.
//! * Bit 2 set: small limits (so that every limit is reachable), else the
//!   defaults.
//!
//! Invariants: no panic, and
//! * every byte sent is a sequence of well-formed HTTP/1.1 responses, each
//!   with a status the API uses (never 500), a `Connection` header, a JSON
//!   object body with a non-empty string `fault_message` on every error, a
//!   JSON object on 200, no body on 204 and 100; nothing after a response
//!   that says `Connection: close`;
//! * the connection never holds more than one request's worth of input,
//!   and its pending output stays bounded;
//! * `GET /` reports the fake VM's state; the VM is started at most once,
//!   with a configuration that `validate()` accepts;
//! * a 204 to `PUT /machine-config` makes `GET /machine-config` show the
//!   values sent;
//! * whenever a boot source is set, `GET /vm/config` is a config file that
//!   describes exactly the configuration `InstanceStart` would use.
#![no_main]

use ember::api::{Limits, VmState};
use ember::fuzzing::api::{
    parse_config_file_with as parse_config_file, write_response, Connection, Controller, FakeCall, FakeVm, HostChecks,
    Request, Response,
};
use ember_fuzz::input::Reader;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Request mode's routes: method and path.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/version"),
    ("GET", "/machine-config"),
    ("PUT", "/machine-config"),
    ("PATCH", "/machine-config"),
    ("PUT", "/boot-source"),
    ("PUT", "/drives/rootfs"),
    ("PUT", "/drives/data"),
    ("PUT", "/network-interfaces/eth0"),
    ("PUT", "/network-interfaces/eth1"),
    ("PUT", "/logger"),
    ("PUT", "/serial"),
    ("PUT", "/actions"),
    ("PATCH", "/vm"),
    ("GET", "/vm/config"),
    ("DELETE", "/drives/rootfs"),
    ("PUT", "/drives/"),
    ("PUT", "/drives/a-b"),
    ("PUT", "/mmds"),
    ("POST", "/actions"),
    ("GET", "/drives/rootfs/extra"),
];
/// The route index that reads the body as a config file.
const CONFIG_FILE: usize = ROUTES.len();

fn small_limits() -> Limits {
    Limits {
        max_connections: 2,
        max_head_bytes: 256,
        max_headers: 8,
        max_body_bytes: 512,
        max_pending_output: 1024,
        max_requests_per_pass: 3,
        ..Limits::default()
    }
}

/// Checks a transcript of everything the server sent on one connection;
/// `methods` are those of the requests answered, in order (a `HEAD`
/// answer has no body).
fn check_transcript(out: &[u8], methods: &[String]) {
    let answered = methods.len() as u64;
    let mut rest = out;
    let mut finals = 0u64;
    let mut closed = false;
    while !rest.is_empty() {
        assert!(!closed, "bytes after a Connection: close response: {:?}", String::from_utf8_lossy(rest));
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Response::new(&mut headers);
        let n = match r.parse(rest) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!("malformed response {other:?}: {:?}", String::from_utf8_lossy(rest)),
        };
        let status = r.code.expect("status");
        assert_eq!(r.version, Some(1));
        let header = |name: &str| {
            r.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| std::str::from_utf8(h.value).unwrap())
        };
        let len = header("content-length").map(|v| v.parse::<usize>().expect("Content-Length"));
        if status == 100 {
            assert!(r.headers.is_empty());
            rest = &rest[n..];
            continue;
        }
        let head = methods.get(finals as usize).is_some_and(|m| m == "HEAD");
        finals += 1;
        let conn = header("connection").expect("Connection header");
        assert!(conn == "keep-alive" || conn == "close", "{conn}");
        closed = conn == "close";
        assert!([200, 204, 400, 405, 408, 411, 413, 431].contains(&status), "status {status}");
        if status == 204 {
            assert_eq!(len, None, "204 with Content-Length");
            rest = &rest[n..];
            continue;
        }
        let len = len.expect("Content-Length");
        if head {
            rest = &rest[n..];
            continue;
        }
        assert!(rest.len() >= n + len, "truncated body");
        let body: Value = serde_json::from_slice(&rest[n..n + len]).expect("JSON body");
        assert!(body.is_object());
        assert_eq!(header("content-type"), Some("application/json"));
        if status >= 400 {
            let m = body["fault_message"].as_str().expect("fault_message");
            assert!(!m.is_empty());
        }
        if status == 405 {
            assert!(header("allow").is_some());
        }
        rest = &rest[n + len..];
    }
    // Every answered request has its response; at most one more (the
    // refusal that closed the connection).
    assert!(finals == answered || finals == answered + 1, "{finals} responses for {answered} requests");
}

/// Whole-API invariants, checked after every step.
fn check_controller(ctl: &mut Controller<FakeVm>) {
    let r = ctl.handle(&Request { method: "GET", path: "/", body: None });
    assert_eq!(r.status, 200);
    let info: Value = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
    let vm = ctl.vm();
    let want = match (vm.started, vm.paused) {
        (false, _) => VmState::NotStarted,
        (true, false) => VmState::Running,
        (true, true) => VmState::Paused,
    };
    assert_eq!(info["state"], want.as_str());
    assert_eq!(ctl.state(), want);
    let starts: Vec<_> = vm.calls.iter().filter(|c| matches!(c, FakeCall::Start { .. })).collect();
    assert!(starts.len() <= 1);
    if let Some(FakeCall::Start { memory, vcpus, cmdline, .. }) = starts.first() {
        assert!((2 << 20..=1 << 40).contains(memory) && *vcpus >= 1 && !cmdline.contains('\0'));
    }
    // GET /vm/config describes what InstanceStart would build.
    if ctl.resources().kernel().is_some() {
        let r = ctl.handle(&Request { method: "GET", path: "/vm/config", body: None });
        assert_eq!(r.status, 200);
        let json = r.body.unwrap();
        let direct = ctl.resources().to_vm_config();
        let again = parse_config_file(json.as_bytes(), HostChecks::Never).and_then(|f| f.vm_config());
        match (direct, again) {
            (Ok(a), Ok(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}"), "{json}"),
            (Err(_), Err(_)) => {}
            (a, b) => panic!("GET /vm/config {json} does not round-trip: {a:?} vs {b:?}"),
        }
    }
}

fn wire_mode(mut r: Reader<'_>, limits: &Limits) {
    let mut ctl = Controller::new(FakeVm::new(), "fuzz", HostChecks::Never);
    let mut conn = Connection::new();
    let mut transcript = Vec::new();
    let mut methods: Vec<String> = Vec::new();
    let mut steps = 0;
    while !r.is_empty() && steps < 4096 {
        steps += 1;
        match r.u8() {
            0 => {
                transcript.extend_from_slice(conn.output());
                conn.consume_output(usize::MAX);
            }
            1 => conn.time_out(),
            2 => conn.end_of_input(),
            op => {
                let data = r.bytes(usize::from(op - 2));
                conn.receive(data, limits);
            }
        }
        conn.process(limits, &mut |req| {
            methods.push(req.method.to_string());
            ctl.handle(req)
        });
        assert!(conn.buffered() <= limits.max_request_bytes());
        // One batch of answers past the bound, each at most a few times a
        // request's size (an error message may quote the request).
        let bound = limits.max_pending_output + 4 * limits.max_request_bytes() + 4096;
        assert!(conn.output().len() <= bound, "{} bytes pending", conn.output().len());
    }
    transcript.extend_from_slice(conn.output());
    assert_eq!(methods.len() as u64, conn.answered());
    check_transcript(&transcript, &methods);
    check_controller(&mut ctl);
}

fn request_mode(mut r: Reader<'_>, fail_start: bool) {
    let mut ctl = Controller::new(FakeVm::new(), "fuzz", HostChecks::Never);
    if fail_start {
        ctl.vm_mut().fail_start = Some("no KVM here".into());
    }
    let mut steps = 0;
    while !r.is_empty() && steps < 256 {
        steps += 1;
        let route = usize::from(r.u8()) % (ROUTES.len() + 1);
        let body = r.blob16();
        if route == CONFIG_FILE {
            if let Ok(f) = parse_config_file(body, HostChecks::Never) {
                if let Ok(c) = f.vm_config() {
                    c.validate().expect("a config file's VmConfig validates");
                }
            }
            continue;
        }
        let (method, path) = ROUTES[route];
        let body = (!body.is_empty()).then_some(body);
        let resp: Response = ctl.handle(&Request { method, path, body });
        assert!([200, 204, 400, 405].contains(&resp.status), "{method} {path}: {}", resp.status);
        let mut wire = Vec::new();
        write_response(&mut wire, &resp, true);
        check_transcript(&wire, &[method.to_string()]);
        if resp.status == 204 && method == "PUT" && path == "/machine-config" {
            let sent: Value = serde_json::from_slice(body.unwrap()).unwrap();
            let r = ctl.handle(&Request { method: "GET", path: "/machine-config", body: None });
            let got: Value = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
            assert_eq!(got["vcpu_count"], sent["vcpu_count"]);
            assert_eq!(got["mem_size_mib"], sent["mem_size_mib"]);
        }
        check_controller(&mut ctl);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let mode = r.u8();
    let limits = if mode & 4 != 0 { small_limits() } else { Limits::default() };
    if mode & 1 == 0 {
        wire_mode(r, &limits);
    } else {
        request_mode(r, mode & 2 != 0);
    }
});
