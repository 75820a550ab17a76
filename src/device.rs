//! Backend choice: a hardware GPU through wgpu (WGSL compute shaders; Vulkan, Metal, DX12) when
//! one exists, otherwise Burn's flex CPU backend. `--device wgpu` forces wgpu even on a software
//! adapter such as Mesa's lavapipe.

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// A hardware GPU adapter through wgpu if there is one, else flex.
    Auto,
    /// wgpu on the default adapter, software adapters included.
    Wgpu,
    /// wgpu on adapter N of `diffnas devices` (`wgpu:N`), software adapters included.
    WgpuAdapter(usize),
    /// Burn's flex CPU backend.
    Flex,
    /// An NVIDIA GPU through Burn's CUDA backend (builds with the `cuda` feature only; a
    /// benchmark option next to wgpu, not a replacement for it).
    Cuda,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "wgpu" => Ok(DeviceChoice::Wgpu),
            "flex" | "cpu" => Ok(DeviceChoice::Flex),
            "cuda" => Ok(DeviceChoice::Cuda),
            o => match o.strip_prefix("wgpu:").map(str::parse) {
                Some(Ok(n)) => Ok(DeviceChoice::WgpuAdapter(n)),
                _ => Err(format!(
                    "unknown device {o:?}: expected auto, wgpu, wgpu:N (adapter N of `diffnas \
                     devices`), flex or cuda"
                )),
            },
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => write!(f, "auto"),
            DeviceChoice::Wgpu => write!(f, "wgpu"),
            DeviceChoice::WgpuAdapter(n) => write!(f, "wgpu:{n}"),
            DeviceChoice::Flex => write!(f, "flex"),
            DeviceChoice::Cuda => write!(f, "cuda"),
        }
    }
}

/// What a device is, for logs and benchmark records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// "wgpu" or "flex".
    pub backend: String,
    /// Adapter name (or "CPU (flex)").
    pub name: String,
    /// Graphics API of the adapter (Vulkan, Metal, Dx12, ...), if any.
    pub api: Option<String>,
    /// Discrete / integrated / virtual GPU, or CPU.
    pub device_type: String,
    pub driver: Option<String>,
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} ({}", self.backend, self.name, self.device_type)?;
        if let Some(api) = &self.api {
            write!(f, ", {api}")?;
        }
        if let Some(d) = &self.driver
            && !d.is_empty()
        {
            write!(f, ", driver {d}")?;
        }
        write!(f, ")")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("this build has no wgpu backend (built without the `wgpu` feature); use --device flex")]
    NoWgpu,
    #[error("no wgpu adapter could be initialised: {0}")]
    WgpuInit(String),
    #[error(
        "this build has no CUDA backend (build with `--features cuda`); use --device wgpu or flex"
    )]
    NoCuda,
    /// `wgpu:N` names no adapter, or one Burn cannot select.
    #[error("--device wgpu:{index}: {why}; `diffnas devices` lists the adapters")]
    NoAdapter { index: usize, why: String },
    /// The `vulkan` build on an adapter it would hand invalid SPIR-V ([`SpirvKernels`]).
    #[error(
        "wgpu adapter {adapter}: the `vulkan` build needs VK_KHR_workgroup_memory_explicit_layout, \
         which this adapter lacks (without it CubeCL 0.11.3 compiles shared memory to invalid \
         SPIR-V, which drivers crash on); {remedy}"
    )]
    InvalidSpirv { adapter: String, remedy: String },
}

impl DeviceError {
    /// Whether the user asked for a device this machine or build cannot have.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            DeviceError::NoWgpu
                | DeviceError::NoCuda
                | DeviceError::NoAdapter { .. }
                | DeviceError::InvalidSpirv { .. }
        )
    }
}

/// A ready device (plain, without autodiff) and what it is.
#[derive(Debug, Clone)]
pub struct SelectedDevice {
    pub device: Device,
    pub info: DeviceInfo,
}

pub fn flex() -> SelectedDevice {
    SelectedDevice {
        device: Device::flex(),
        info: DeviceInfo {
            backend: "flex".into(),
            name: "CPU (flex)".into(),
            api: None,
            device_type: "Cpu".into(),
            driver: None,
        },
    }
}

#[cfg(feature = "wgpu")]
fn info_of(a: &wgpu::AdapterInfo) -> DeviceInfo {
    DeviceInfo {
        backend: "wgpu".into(),
        name: a.name.clone(),
        api: Some(format!("{:?}", a.backend)),
        device_type: format!("{:?}", a.device_type),
        driver: Some(format!("{} {}", a.driver, a.driver_info).trim().to_string()),
    }
}

/// Keeps a headless machine's adapter probe quiet. Mesa's Vulkan device-select layer orders
/// GPUs by asking the Wayland compositor which one drives the display; with no session
/// (`XDG_RUNTIME_DIR` unset, so no compositor can be reached) libwayland prints "error:
/// XDG_RUNTIME_DIR is invalid or not set in the environment." each time it tries, and there
/// is nothing to learn. Then this turns the layer off (`NODEVICE_SELECT=1`), unless the user
/// set that variable. wgpu still sees every adapter and picks by its own preference. Call it at
/// the start of `main`, before any thread exists.
pub fn quiet_headless_probe() {
    let set = |v: &str| std::env::var_os(v).is_some_and(|x| !x.is_empty());
    let runtime_dir =
        std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| std::path::Path::new(&d).is_dir());
    if !runtime_dir && !set("WAYLAND_SOCKET") && std::env::var_os("NODEVICE_SELECT").is_none() {
        // SAFETY: documented precondition: no other thread reads the environment yet.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
}

/// Every adapter wgpu can see, on every graphics API.
#[cfg(feature = "wgpu")]
pub fn adapters() -> Vec<DeviceInfo> {
    all_adapters()
        .iter()
        .map(|a| info_of(&a.get_info()))
        .collect()
}

/// wgpu's adapters on every graphics API, in the order `diffnas devices` numbers them.
#[cfg(feature = "wgpu")]
fn all_adapters() -> Vec<wgpu::Adapter> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
}

#[cfg(not(feature = "wgpu"))]
pub fn adapters() -> Vec<DeviceInfo> {
    Vec::new()
}

/// What an adapter offers for 16-bit compute (`diffnas devices`): WGSL's `shader-f16`, and the
/// cooperative-matrix (tensor-core) shapes its driver reports, which only a SPIR-V build (the
/// `vulkan` feature) can use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    pub shader_f16: bool,
    /// `A x B -> C MxNxK` per supported configuration; empty without cooperative matrices.
    pub cooperative_matrix: Vec<String>,
    /// What the `vulkan` build compiles this adapter's kernels to; `None` in the other builds
    /// and on adapters that are not Vulkan.
    pub spirv: Option<SpirvKernels>,
}

/// What the `vulkan` build's kernels become on a Vulkan adapter. CubeCL 0.11.3 compiles them to
/// SPIR-V where the adapter has the Vulkan memory model (device scope) and buffer device
/// addresses, and to WGSL elsewhere. Its SPIR-V is valid for kernels with workgroup (shared)
/// memory only through `VK_KHR_workgroup_memory_explicit_layout`: without it, the variable it
/// declares for shared memory is a pointer to a pointer, which `spirv-val` rejects and a driver
/// may crash on (lavapipe does, in Burn's first tiled matmul; see
/// `examples/bench/validate_spirv.sh`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpirvKernels {
    /// SPIR-V, shared memory laid out explicitly: the path that uses cooperative matrices.
    Valid,
    /// WGSL, as in the default build: the adapter lacks what CubeCL's SPIR-V needs.
    Wgsl,
    /// SPIR-V that is invalid wherever a kernel uses shared memory: this build refuses the
    /// adapter.
    InvalidSharedMemory,
}

impl std::fmt::Display for SpirvKernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SpirvKernels::Valid => "SPIR-V",
            SpirvKernels::Wgsl => {
                "WGSL (no Vulkan memory model with device scope or no buffer device address)"
            }
            SpirvKernels::InvalidSharedMemory => {
                "refused by this build (no VK_KHR_workgroup_memory_explicit_layout, without \
                 which CubeCL 0.11.3's SPIR-V for shared memory is invalid)"
            }
        })
    }
}

impl std::fmt::Display for Capabilities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let coop = if self.cooperative_matrix.is_empty() {
            "none".to_string()
        } else {
            self.cooperative_matrix.join(", ")
        };
        write!(
            f,
            "shader-f16 {}; cooperative matrix: {coop}",
            if self.shader_f16 { "yes" } else { "no" }
        )?;
        match self.spirv {
            Some(k) => write!(f, "; kernels: {k}"),
            None => Ok(()),
        }
    }
}

/// [`Capabilities`] of every adapter, in the order of [`adapters`].
#[cfg(feature = "wgpu")]
pub fn capabilities() -> Vec<Capabilities> {
    all_adapters()
        .iter()
        .map(|a| {
            let features = a.features();
            let cooperative_matrix =
                if features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
                    a.cooperative_matrix_properties()
                        .iter()
                        .map(|p| {
                            format!(
                                "{:?} x {:?} -> {:?} {}x{}x{}",
                                p.ab_type, p.ab_type, p.cr_type, p.m_size, p.n_size, p.k_size
                            )
                        })
                        .collect()
                } else {
                    Vec::new()
                };
            Capabilities {
                shader_f16: features.contains(wgpu::Features::SHADER_F16),
                cooperative_matrix,
                spirv: spirv_kernels(a),
            }
        })
        .collect()
}

#[cfg(not(feature = "wgpu"))]
pub fn capabilities() -> Vec<Capabilities> {
    Vec::new()
}

/// [`SpirvKernels`] of a Vulkan adapter in the `vulkan` build, read the way CubeCL reads the
/// adapter's features when it picks a compiler.
#[cfg(feature = "vulkan")]
fn spirv_kernels(a: &wgpu::Adapter) -> Option<SpirvKernels> {
    use ash::vk;
    // SAFETY: the adapter outlives the borrow; only properties and features are read.
    let hal = unsafe { a.as_hal::<wgpu::hal::api::Vulkan>() }?;
    let caps = hal.physical_device_capabilities();
    let version = caps.properties().api_version;
    let core12 = version >= vk::API_VERSION_1_2;
    let model_known = core12 || caps.supports_extension(vk::KHR_VULKAN_MEMORY_MODEL_NAME);
    let address_known = core12 || caps.supports_extension(vk::KHR_BUFFER_DEVICE_ADDRESS_NAME);
    let explicit_known = caps.supports_extension(vk::KHR_WORKGROUP_MEMORY_EXPLICIT_LAYOUT_NAME);
    let mut model = vk::PhysicalDeviceVulkanMemoryModelFeatures::default();
    let mut address = vk::PhysicalDeviceBufferDeviceAddressFeatures::default();
    let mut explicit = vk::PhysicalDeviceWorkgroupMemoryExplicitLayoutFeaturesKHR::default();
    let mut features = vk::PhysicalDeviceFeatures2::default();
    if model_known {
        features = features.push_next(&mut model);
    }
    if address_known {
        features = features.push_next(&mut address);
    }
    if explicit_known {
        features = features.push_next(&mut explicit);
    }
    if version >= vk::API_VERSION_1_1 {
        // SAFETY: the physical device belongs to this instance; every structure chained above
        // is core at the device's version or one of its extensions.
        unsafe {
            hal.shared_instance()
                .raw_instance()
                .get_physical_device_features2(hal.raw_physical_device(), &mut features)
        };
    }
    let spirv = model.vulkan_memory_model == vk::TRUE
        && model.vulkan_memory_model_device_scope == vk::TRUE
        && address.buffer_device_address == vk::TRUE
        && version >= vk::API_VERSION_1_1;
    Some(if !spirv {
        SpirvKernels::Wgsl
    } else if explicit.workgroup_memory_explicit_layout == vk::TRUE {
        SpirvKernels::Valid
    } else {
        SpirvKernels::InvalidSharedMemory
    })
}

#[cfg(all(feature = "wgpu", not(feature = "vulkan")))]
fn spirv_kernels(_: &wgpu::Adapter) -> Option<SpirvKernels> {
    None
}

/// The error for an adapter whose SPIR-V this build refuses, naming the adapters it would take.
#[cfg(feature = "wgpu")]
fn refuse_invalid_spirv(name: &str) -> DeviceError {
    let usable: Vec<String> = all_adapters()
        .iter()
        .enumerate()
        .filter(|(_, a)| spirv_kernels(a) != Some(SpirvKernels::InvalidSharedMemory))
        .map(|(i, a)| format!("--device wgpu:{i} ({}, {:?})", a.get_info().name, a.get_info().backend))
        .collect();
    let others = if usable.is_empty() {
        String::new()
    } else {
        format!(", or pick another adapter: {}", usable.join(", "))
    };
    DeviceError::InvalidSpirv {
        adapter: name.to_string(),
        remedy: format!("run the default build (WGSL kernels){others}"),
    }
}

/// The wgpu device of this process: initialised once (under a lock, so that threads asking at
/// the same time do not race the runtime's setup), then handed out again.
#[cfg(feature = "wgpu")]
fn init_wgpu() -> Result<SelectedDevice, DeviceError> {
    static WGPU: std::sync::Mutex<Option<SelectedDevice>> = std::sync::Mutex::new(None);
    let mut held = WGPU.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(d) = held.as_ref() {
        return Ok(d.clone());
    }
    let d = init_wgpu_once()?;
    *held = Some(d.clone());
    Ok(d)
}

#[cfg(feature = "wgpu")]
fn init_wgpu_once() -> Result<SelectedDevice, DeviceError> {
    use burn::tensor::DeviceKind;
    let mut last = String::new();
    for kind in [DeviceKind::DefaultDevice, DeviceKind::Cpu] {
        match Device::wgpu_options().device_kind(kind).init_with_setup() {
            Ok((_, setup))
                if spirv_kernels(&setup.adapter) == Some(SpirvKernels::InvalidSharedMemory) =>
            {
                return Err(refuse_invalid_spirv(&setup.adapter.get_info().name));
            }
            Ok((device, setup)) => {
                return Ok(SelectedDevice {
                    device,
                    info: info_of(&setup.adapter.get_info()),
                });
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(DeviceError::WgpuInit(last))
}

/// The wgpu device on adapter `index` of [`adapters`] (initialised once per process, like
/// [`init_wgpu`]'s): Burn addresses an adapter by its graphics API, its type and its place
/// among the adapters of that API and type.
#[cfg(feature = "wgpu")]
fn init_wgpu_adapter(index: usize) -> Result<SelectedDevice, DeviceError> {
    use burn::tensor::DeviceKind;
    use burn::tensor::wgpu::WgpuBackend;
    type Held = Vec<(usize, SelectedDevice)>;
    static HELD: std::sync::Mutex<Held> = std::sync::Mutex::new(Vec::new());
    let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, d)) = held.iter().find(|(i, _)| *i == index) {
        return Ok(d.clone());
    }
    let bad = |why: String| DeviceError::NoAdapter { index, why };
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let list: Vec<wgpu::AdapterInfo> =
        pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
            .iter()
            .map(|a| a.get_info())
            .collect();
    let Some(a) = list.get(index) else {
        return Err(bad(format!(
            "this machine has {} wgpu adapter(s)",
            list.len()
        )));
    };
    if let Some(adapter) = all_adapters().get(index)
        && spirv_kernels(adapter) == Some(SpirvKernels::InvalidSharedMemory)
    {
        return Err(refuse_invalid_spirv(&a.name));
    }
    let k = list[..index]
        .iter()
        .filter(|b| b.backend == a.backend && b.device_type == a.device_type)
        .count();
    let kind = match a.device_type {
        wgpu::DeviceType::DiscreteGpu => DeviceKind::DiscreteGpu(k),
        wgpu::DeviceType::IntegratedGpu => DeviceKind::IntegratedGpu(k),
        wgpu::DeviceType::VirtualGpu => DeviceKind::VirtualGpu(k),
        wgpu::DeviceType::Cpu => DeviceKind::Cpu,
        other => {
            return Err(bad(format!(
                "{} is of type {other:?}, which cannot be selected",
                a.name
            )));
        }
    };
    let api = match a.backend {
        wgpu::Backend::Vulkan => WgpuBackend::Vulkan,
        wgpu::Backend::Metal => WgpuBackend::Metal,
        wgpu::Backend::Dx12 => WgpuBackend::Dx12,
        wgpu::Backend::Gl => WgpuBackend::Gl,
        wgpu::Backend::BrowserWebGpu => WgpuBackend::WebGpu,
        other => {
            return Err(bad(format!(
                "{} is on {other:?}, which cannot be selected",
                a.name
            )));
        }
    };
    let (device, setup) = Device::wgpu_options()
        .device_kind(kind)
        .graphics_api(api)
        .init_with_setup()
        .map_err(|e| bad(format!("{}: {e}", a.name)))?;
    let d = SelectedDevice {
        device,
        info: info_of(&setup.adapter.get_info()),
    };
    held.push((index, d.clone()));
    Ok(d)
}

/// What `diffnas devices` prints: the wgpu adapters this build can see, one per line, and
/// what `--device auto` picks.
pub fn describe() -> Result<String, DeviceError> {
    let list = adapters();
    let mut out = String::new();
    if !cfg!(feature = "wgpu") {
        out += "this build has no wgpu backend (built without the `wgpu` feature): CPU only\n";
    } else if list.is_empty() {
        out += "no wgpu adapters found\n";
    }
    let caps = capabilities();
    for (i, a) in list.iter().enumerate() {
        out += &format!("[{i}] {a}\n");
        if let Some(c) = caps.get(i) {
            out += &format!("    {c}\n");
        }
    }
    if cfg!(feature = "wgpu") && !list.is_empty() {
        out += kernel_language();
        out += "\n";
    }
    Ok(out
        + &format!(
            "--device auto picks: {}\n",
            select(DeviceChoice::Auto)?.info
        ))
}

/// What this build compiles its GPU kernels to, and so whether the cooperative matrices listed
/// by [`describe`] are used: only the `vulkan` build's SPIR-V reaches them, on Vulkan adapters
/// that have the features it needs (CubeCL falls back to WGSL on the others).
pub fn kernel_language() -> &'static str {
    if cfg!(feature = "vulkan") {
        "kernels: SPIR-V on Vulkan adapters that support it (cooperative matrices used for \
         f16 matmuls where listed), WGSL on the others"
    } else {
        "kernels: WGSL on every adapter (cooperative matrices unused: they need the `vulkan` \
         build)"
    }
}

/// The adapter of `list` (as [`adapters`] gives it) that a Slurm job's GPU is, from the GPU
/// indices Slurm gave the job (`SLURM_STEP_GPUS`, `SLURM_JOB_GPUS` or `GPU_DEVICE_ORDINAL`,
/// e.g. `2` or `2,3`; the first is used): with the job's devices constrained, the one hardware
/// adapter it can see; otherwise the hardware adapter of that index on the first graphics API
/// that lists one. None when the job has no GPU or no such adapter is seen.
pub fn slurm_adapter(list: &[DeviceInfo], gpus: &str) -> Option<usize> {
    let first: usize = gpus.split(',').next()?.trim().parse().ok()?;
    let api = list.iter().find(|a| a.device_type != "Cpu")?.api.clone();
    let hardware: Vec<usize> = (0..list.len())
        .filter(|&i| list[i].device_type != "Cpu" && list[i].api == api)
        .collect();
    match hardware.len() {
        1 => Some(hardware[0]),
        _ => hardware.get(first).copied(),
    }
}

/// The GPU indices Slurm gave this job, if it runs in one.
fn slurm_gpus() -> Option<String> {
    std::env::var_os("SLURM_JOB_ID")?;
    ["SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "GPU_DEVICE_ORDINAL"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
}

/// Pick and initialise a device. In a Slurm job, `auto` takes the GPU the job was given
/// ([`slurm_adapter`]).
pub fn select(choice: DeviceChoice) -> Result<SelectedDevice, DeviceError> {
    match choice {
        DeviceChoice::Flex => Ok(flex()),
        #[cfg(feature = "cuda")]
        DeviceChoice::Cuda => {
            let device = Device::cuda(0);
            let name = device
                .identity()
                .map_or_else(|| "CUDA device 0".to_string(), |i| i.name);
            Ok(SelectedDevice {
                device,
                info: DeviceInfo {
                    backend: "cuda".into(),
                    name,
                    api: Some("Cuda".into()),
                    device_type: "DiscreteGpu".into(),
                    driver: None,
                },
            })
        }
        #[cfg(not(feature = "cuda"))]
        DeviceChoice::Cuda => Err(DeviceError::NoCuda),
        #[cfg(feature = "wgpu")]
        DeviceChoice::Wgpu => init_wgpu(),
        #[cfg(feature = "wgpu")]
        DeviceChoice::WgpuAdapter(n) => init_wgpu_adapter(n),
        #[cfg(not(feature = "wgpu"))]
        DeviceChoice::Wgpu | DeviceChoice::WgpuAdapter(_) => Err(DeviceError::NoWgpu),
        DeviceChoice::Auto => {
            let list = adapters();
            if let Some(i) = slurm_gpus().and_then(|g| slurm_adapter(&list, &g)) {
                return select(DeviceChoice::WgpuAdapter(i));
            }
            let hardware = list.iter().any(|a| a.device_type != "Cpu");
            if !hardware {
                return Ok(flex());
            }
            #[cfg(feature = "wgpu")]
            {
                match init_wgpu() {
                    Ok(d) if d.info.device_type != "Cpu" => Ok(d),
                    _ => Ok(flex()),
                }
            }
            #[cfg(not(feature = "wgpu"))]
            Ok(flex())
        }
    }
}

/// Where CubeCL keeps autotune results, compiled kernels and device probes between processes
/// (feature `kernel-cache`): `<dir>/default.db`. CubeCL's own default is `target/environment`
/// under the outermost `Cargo.toml` above the working directory, else the user cache
/// directory, which scatters the cache over whatever project a user runs from and loses it in a
/// fresh clone. A `cubecl.toml` that names a directory still wins. With `autotune_log`, every
/// autotune decision (the operation and shape it tuned, the fastest candidate, the three best
/// times) is appended to that file as one line. Best called before the first device is
/// created; later, it moves every store from then on.
#[cfg(feature = "kernel-cache")]
pub fn configure_kernels(dir: &std::path::Path, autotune_log: Option<&std::path::Path>) {
    use cubecl_runtime::config::cache::CacheConfig;
    use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig};
    let mut cfg = CubeClRuntimeConfig::from_current_dir().override_from_env();
    // The built-in defaults (Target, Global) are ours to move; a directory a user named is not.
    let moved = matches!(
        cfg.environment.path,
        CacheConfig::Target | CacheConfig::Global
    );
    if moved {
        cfg.environment.path = CacheConfig::Directory(dir.to_path_buf());
    }
    if let Some(log) = autotune_log {
        cfg.autotune.logger.file = Some(log.to_path_buf());
    }
    if !moved && autotune_log.is_none() {
        return;
    }
    // Installing the configuration points the environment root at `dir` (CubeCL does that when a
    // configuration is loaded); if one was loaded already, move the root directly.
    if !CubeClRuntimeConfig::try_set(cfg)
        && moved
        && matches!(
            CubeClRuntimeConfig::get().environment.path,
            CacheConfig::Target
        )
    {
        cubecl_environment::environment::set_root(dir);
    }
}
