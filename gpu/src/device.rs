//! Opening a device: adapter choice, limits, optional tensor cores, and error capture into a
//! shared slot (wgpu reports validation errors and device loss through callbacks; we turn them
//! into [`GpuError`]s).

use crate::GpuError;
use crate::kernels::CoopTile;
use std::sync::{Arc, Mutex};

/// Which adapter to take.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AdapterChoice {
    /// The best available: discrete > integrated > virtual > CPU (lavapipe).
    #[default]
    Any,
}

/// The first error wgpu reported asynchronously (validation, out of memory, device lost).
#[derive(Clone, Default)]
pub(crate) struct ErrorSlot(Arc<Mutex<Option<String>>>);

impl ErrorSlot {
    fn set(&self, msg: String) {
        // A poisoned lock only means another thread panicked while holding it: keep going.
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.get_or_insert(msg);
    }

    /// Err with the first recorded error, if any.
    pub(crate) fn check(&self) -> Result<(), GpuError> {
        let g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match g.as_ref() {
            Some(m) => Err(GpuError::DeviceLost(m.clone())),
            None => Ok(()),
        }
    }
}

/// A wgpu device + queue, opened once per process.
pub struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) info: wgpu::AdapterInfo,
    pub(crate) errors: ErrorSlot,
    /// The GEMMs run on tensor cores (`gemm_coop.wgsl`); see [`Gpu::tensor_cores`].
    pub(crate) coop: bool,
    /// Subgroup operations are on and subgroups are exactly 32 lanes (the fused step's teams).
    pub(crate) subgroups32: bool,
    /// `@coherent` storage buffers are on (the fused step's exchange between workgroups).
    pub(crate) coherent: bool,
    coop_props: Vec<wgpu::CooperativeMatrixProperties>,
}

/// What `gemm_coop.wgsl` needs besides the configuration [`coop_gemm_fits`] looks for: the
/// cooperative matrices, f16 in shaders (its staged tiles), and subgroup ids (which 32 lanes
/// share a fragment).
const COOP_FEATURES: wgpu::Features = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX
    .union(wgpu::Features::SHADER_F16)
    .union(wgpu::Features::SUBGROUP);

/// Whether `adapter` can run `gemm_coop.wgsl`: the features, a 16×16×16 f16 × f16 → f32
/// configuration, subgroups of exactly 32 lanes (the shader's workgroups are counted in
/// subgroups of 32) and the workgroup memory of its largest tile. Software adapters (lavapipe)
/// have none of it and keep `gemm.wgsl`.
fn coop_gemm_fits(adapter: &wgpu::Adapter) -> bool {
    use wgpu::CooperativeScalarType::{F16, F32};
    let info = adapter.get_info();
    adapter.features().contains(COOP_FEATURES)
        && adapter
            .cooperative_matrix_properties()
            .iter()
            .any(|p| (p.m_size, p.n_size, p.k_size, p.ab_type, p.cr_type) == (16, 16, 16, F16, F32))
        && (info.subgroup_min_size, info.subgroup_max_size) == (32, 32)
        && adapter.limits().max_compute_workgroup_storage_size >= CoopTile::MAX_WORKGROUP_BYTES
}

/// Preference order of adapter kinds, best first.
fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

impl Gpu {
    /// Blocking (pollster). `Err(GpuError::NoAdapter)` when no adapter exists, never a panic.
    pub fn open(choice: AdapterChoice) -> Result<Gpu, GpuError> {
        let AdapterChoice::Any = choice;
        if wgpu::Instance::enabled_backend_features().is_empty() {
            return Err(GpuError::NoAdapter);
        }
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        // wgpu checks each indirect dispatch's workgroup counts with a dispatch of its own, which
        // would double a batched step's dispatches. The only indirect counts are those
        // `GpuModel` writes, from sizes it checked against the device's grid limit at load.
        desc.flags.remove(wgpu::InstanceFlags::VALIDATION_INDIRECT_CALL);
        let instance = wgpu::Instance::new(desc);
        let mut adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        // Vulkan first among equals: it is the backend the kernels are tuned and tested on.
        adapters.sort_by_key(|a| {
            let i = a.get_info();
            (rank(i.device_type), i.backend != wgpu::Backend::Vulkan)
        });
        let adapter = adapters.into_iter().next().ok_or(GpuError::NoAdapter)?;
        let coop = coop_gemm_fits(&adapter);
        // Timestamp queries when the adapter has them: GpuModel::set_profiling uses them.
        let mut features = adapter.features()
            & (wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES);
        let info = adapter.get_info();
        let subgroups32 = adapter.features().contains(wgpu::Features::SUBGROUP)
            && (info.subgroup_min_size, info.subgroup_max_size) == (32, 32);
        if subgroups32 {
            features |= wgpu::Features::SUBGROUP;
        }
        let coherent = adapter.features().contains(wgpu::Features::MEMORY_DECORATION_COHERENT);
        if coherent {
            features |= wgpu::Features::MEMORY_DECORATION_COHERENT;
        }
        let mut experimental = wgpu::ExperimentalFeatures::disabled();
        if coop {
            features |= COOP_FEATURES;
            // SAFETY: wgpu asks us to accept that its experimental features may still hold
            // bugs with undefined behaviour. We ask for cooperative matrices alone, use them in
            // one shader (gemm_coop.wgsl) whose loads and stores stay inside its workgroup
            // arrays, and check that shader against a CPU product (model.rs `gemm_kernel`).
            experimental = unsafe { wgpu::ExperimentalFeatures::enabled() };
        }
        let desc = wgpu::DeviceDescriptor {
            label: Some("tinystate"),
            required_features: features,
            // The adapter's own limits: weights and state slots need large storage bindings.
            required_limits: adapter.limits(),
            experimental_features: experimental,
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc))
            .map_err(|e| GpuError::RequestDevice(e.to_string()))?;
        let errors = ErrorSlot::default();
        let e = errors.clone();
        device.on_uncaptured_error(Arc::new(move |err: wgpu::Error| e.set(err.to_string())));
        let e = errors.clone();
        device.set_device_lost_callback(move |reason, msg| e.set(format!("{reason:?}: {msg}")));
        let coop_props = adapter.cooperative_matrix_properties();
        Ok(Gpu { device, queue, info, errors, coop, subgroups32, coherent, coop_props })
    }

    /// E.g. "NVIDIA H200 (Vulkan, tensor cores)" or "llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan)",
    /// for logs.
    pub fn describe(&self) -> String {
        let tc = if self.coop { ", tensor cores" } else { "" };
        format!("{} ({:?}{tc})", self.info.name, self.info.backend)
    }

    /// Whether models loaded after this run their GEMMs (batches and prefill chunks of more
    /// than 8 tokens) on tensor cores, every weight format, with f16 activations: the
    /// adapter lists 16×16×16 f16 × f16 → f32 cooperative matrices (Vulkan
    /// `VK_KHR_cooperative_matrix`).
    pub fn tensor_cores(&self) -> bool {
        self.coop
    }

    /// Turns the tensor-core GEMMs off (true is ignored where the adapter has none) for models
    /// loaded after this, e.g. to compare them with the f32 GEMMs.
    pub fn set_tensor_cores(&mut self, on: bool) {
        self.coop = on && self.device.features().contains(COOP_FEATURES);
    }

    /// The cooperative-matrix configurations the adapter lists (empty without the feature).
    pub fn cooperative_matrix_properties(&self) -> &[wgpu::CooperativeMatrixProperties] {
        &self.coop_props
    }

    /// The wgpu device (for tools that record their own work, e.g. the dispatch-cost example).
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The device's queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The device's limits (those of the adapter).
    pub fn limits(&self) -> wgpu::Limits {
        self.device.limits()
    }
}
