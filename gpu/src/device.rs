//! Opening a device: adapter choice, limits, and error capture into a shared slot (wgpu reports
//! validation errors and device loss through callbacks; we turn them into [`GpuError`]s).

use crate::GpuError;
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
        let desc = wgpu::DeviceDescriptor {
            label: Some("tinystate"),
            // Timestamp queries when the adapter has them: GpuModel::set_profiling uses them.
            required_features: adapter.features()
                & (wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES),
            // The adapter's own limits: weights and state slots need large storage bindings.
            required_limits: adapter.limits(),
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc))
            .map_err(|e| GpuError::RequestDevice(e.to_string()))?;
        let errors = ErrorSlot::default();
        let e = errors.clone();
        device.on_uncaptured_error(Arc::new(move |err: wgpu::Error| e.set(err.to_string())));
        let e = errors.clone();
        device.set_device_lost_callback(move |reason, msg| e.set(format!("{reason:?}: {msg}")));
        Ok(Gpu { device, queue, info: adapter.get_info(), errors })
    }

    /// E.g. "NVIDIA H200 (Vulkan)" or "llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan)", for logs.
    pub fn describe(&self) -> String {
        format!("{} ({:?})", self.info.name, self.info.backend)
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
