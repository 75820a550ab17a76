//! The browser demo in a real browser: Debian's headless Chromium (SwiftShader's WebGPU adapter
//! on a machine without a GPU) loads web/index.html from 127.0.0.1, samples an exported model on
//! WebGPU and on the CPU fallback, and the images must equal `diffnas sample`'s for the same seed
//! and sampler. Broken bundles must show their error in the page.
//!
//! Needs `bash web/build.sh` first (web/pkg and the playwright-core driver), Chromium and python3
//! (the documented `python3 -m http.server` serves the page). Screenshots and the page's reports
//! land in web/test-output/.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const FIXTURE: &str = "tests/fixtures/fmnist-tiny";
const N: usize = 4;
const STEPS: usize = 5;
const SEED: u64 = 7;

/// Largest difference allowed between a browser pixel and the native one (8-bit levels), and
/// the largest mean difference. Backends sum in different orders (f32), so a value on a rounding
/// boundary may land one level off; five denoising steps amplify that little.
const MAX_LEVELS: u8 = 2;
const MAX_MEAN_LEVELS: f64 = 0.05;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(dir: &Path) -> (Server, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs (the demo's documented static server)");
    let server = Server(child);
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the server did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (server, port)
}

fn diffnas(args: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_diffnas"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "diffnas {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Open the page with `query`, wait for it to finish, and return what it reported.
fn drive(port: u16, query: &str, name: &str, out: &Path, webgpu: bool) -> serde_json::Value {
    let json = out.join(format!("{name}.json"));
    let o = Command::new("node")
        .arg("web/tests/drive.mjs")
        .args(["--webgpu", if webgpu { "on" } else { "off" }])
        .args([
            "--url",
            &format!("http://127.0.0.1:{port}/index.html?{query}"),
        ])
        .args(["--out", json.to_str().unwrap()])
        .args([
            "--screenshot",
            out.join(format!("{name}.png")).to_str().unwrap(),
        ])
        .args(["--timeout", "900"])
        .output()
        .expect("node runs");
    assert!(
        o.status.success(),
        "driver: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
}

fn page_pixels(r: &serde_json::Value) -> Vec<u8> {
    r["pixels"]
        .as_array()
        .unwrap_or_else(|| panic!("no images in the page's report: {r}"))
        .iter()
        .map(|v| v.as_u64().unwrap() as u8)
        .collect()
}

fn compare(what: &str, page: &[u8], native: &[u8]) -> (u8, f64) {
    assert_eq!(page.len(), native.len(), "{what}: image sizes differ");
    let max = page
        .iter()
        .zip(native)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    let mean = page
        .iter()
        .zip(native)
        .map(|(a, b)| a.abs_diff(*b) as f64)
        .sum::<f64>()
        / page.len() as f64;
    eprintln!("{what}: max |browser - native| = {max} levels, mean = {mean:.4}");
    assert!(
        max <= MAX_LEVELS && mean <= MAX_MEAN_LEVELS,
        "{what}: max {max}, mean {mean}"
    );
    (max, mean)
}

#[test]
fn browser_samples_equal_native_samples() {
    let pkg = Path::new("web/pkg/diffnas_web_bg.wasm");
    assert!(
        pkg.is_file(),
        "{} is missing: run `bash web/build.sh` first",
        pkg.display()
    );
    assert!(
        Path::new("web/node_modules/playwright-core").is_dir(),
        "the browser driver is missing: run `bash web/build.sh` (it runs npm ci in web/)"
    );

    // The site: the demo's files plus a models folder of our own.
    let tmp = tempfile::tempdir().unwrap();
    let site = tmp.path().join("site");
    std::fs::create_dir_all(&site).unwrap();
    let web = std::fs::canonicalize("web").unwrap();
    for f in ["index.html", "main.js", "worker.js", "pkg"] {
        std::os::unix::fs::symlink(web.join(f), site.join(f)).unwrap();
    }
    let models = site.join("models");
    let m = models.to_str().unwrap();
    diffnas(&["export", FIXTURE, "--out", m, "--name", "tiny"]);
    diffnas(&["export", FIXTURE, "--out", m, "--name", "corrupt"]);
    diffnas(&["export", FIXTURE, "--out", m, "--name", "mismatch"]);
    // corrupt: one flipped byte in the weights.
    let w = models.join("corrupt/weights.bpk");
    let mut bytes = std::fs::read(&w).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&w, bytes).unwrap();
    // mismatch: another (valid) genome with a manifest that vouches for it.
    let gp = models.join("mismatch/genome.json");
    let mut g = diffnas::genome::Genome::from_json(&std::fs::read_to_string(&gp).unwrap()).unwrap();
    g.base_channels = 32;
    let text = g.to_json_pretty();
    std::fs::write(&gp, &text).unwrap();
    let mp = models.join("mismatch/model.json");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&mp).unwrap()).unwrap();
    manifest["genome"] = serde_json::to_value(diffnas::model::bundle::FileEntry::of(
        "genome.json",
        text.as_bytes(),
    ))
    .unwrap();
    std::fs::write(&mp, manifest.to_string()).unwrap();

    // Native reference: `diffnas sample` on the CPU, one PNG per image.
    let native_dir = tmp.path().join("native");
    let (n, steps, seed) = (N.to_string(), STEPS.to_string(), SEED.to_string());
    diffnas(&[
        "sample",
        FIXTURE,
        "--n",
        &n,
        "--steps",
        &steps,
        "--seed",
        &seed,
        "--sampler",
        "ddim",
        "--batch-size",
        "3",
        "--device",
        "flex",
        "--individual",
        native_dir.to_str().unwrap(),
    ]);
    let mut native = Vec::new();
    for i in 0..N {
        let img = image::open(native_dir.join(format!("{i:06}.png")))
            .unwrap()
            .to_luma8();
        assert_eq!(img.dimensions(), (28, 28));
        native.extend_from_slice(img.as_raw());
    }

    let out = PathBuf::from("web/test-output");
    std::fs::create_dir_all(&out).unwrap();
    let (_server, port) = serve(&site);
    let query = |backend: &str, model: &str| {
        format!("model={model}&n={N}&steps={STEPS}&seed={SEED}&backend={backend}&run=1")
    };

    let gpu = drive(port, &query("webgpu", "tiny"), "webgpu", &out, true);
    assert_eq!(gpu["state"], "done", "WebGPU run: {gpu:#}");
    let backend = gpu["backend"].as_str().unwrap();
    assert!(backend.starts_with("WebGPU"), "{backend}");
    assert_eq!(gpu["steps"], STEPS);
    compare("WebGPU", &page_pixels(&gpu), &native);

    // "auto" in a browser without WebGPU falls back to the CPU and says why.
    let cpu = drive(port, &query("auto", "tiny"), "cpu-fallback", &out, false);
    assert_eq!(cpu["state"], "done", "CPU run: {cpu:#}");
    assert!(
        cpu["backend"].as_str().unwrap().starts_with("CPU"),
        "{cpu:#}"
    );
    let reason = cpu["fallbackReason"].as_str().unwrap_or_default();
    assert!(reason.contains("no WebGPU adapter"), "{cpu:#}");
    assert!(
        cpu["status"].as_str().unwrap().contains("ms per image"),
        "{cpu:#}"
    );
    compare("CPU fallback", &page_pixels(&cpu), &native);

    // An explicit CPU choice in a browser that has WebGPU.
    let cpu = drive(port, &query("cpu", "tiny"), "cpu", &out, true);
    assert_eq!(cpu["state"], "done", "CPU run: {cpu:#}");
    assert!(
        cpu["backend"].as_str().unwrap().starts_with("CPU"),
        "{cpu:#}"
    );
    assert!(cpu["fallbackReason"].is_null(), "{cpu:#}");
    compare("CPU", &page_pixels(&cpu), &native);

    let bad = drive(port, &query("cpu", "corrupt"), "corrupt", &out, false);
    assert_eq!(bad["state"], "error", "{bad:#}");
    let text = bad["errorText"].as_str().unwrap();
    assert!(text.contains("weights.bpk: SHA-256"), "{text}");
    assert!(
        text.contains("corrupt"),
        "the error names the model: {text}"
    );

    let bad = drive(port, &query("cpu", "mismatch"), "mismatch", &out, false);
    assert_eq!(bad["state"], "error", "{bad:#}");
    let text = bad["errorText"].as_str().unwrap();
    assert!(
        text.contains("weights.bpk does not fit the genome"),
        "{text}"
    );

    let bad = drive(port, &query("cpu", "absent"), "absent", &out, false);
    assert_eq!(bad["state"], "error", "{bad:#}");
    assert!(
        bad["errorText"]
            .as_str()
            .unwrap()
            .contains("No model named \"absent\"")
    );
}
