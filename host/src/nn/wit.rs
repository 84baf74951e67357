//! The wasi-nn ABI: bindings generated from `wit/wasi-nn.wit` (async imports, so `compute`
//! awaits its backend without holding a thread) and the host side of each resource. The rules
//! of what may pass are in [`super::contract`]; the backends in [`super::cpu`] and `super::gpu`.
//!
//! Every resource lives in the request's [`ResourceTable`]; a context keeps its model alive and
//! frees its state when dropped, whether by the guest or with the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use super::contract::{self, TensorParts};
use super::{Context, Model, Models, NnError};

wasmtime::component::bindgen!({
    path: "../wit/wasi-nn.wit",
    world: "ml",
    imports: { default: async | trappable },
    with: {
        "wasi:nn/tensor.tensor": crate::nn::contract::TensorParts,
        "wasi:nn/graph.graph": Graph,
        "wasi:nn/inference.graph-execution-context": ExecContext,
        "wasi:nn/errors.error": ErrorRes,
    },
});

pub use wasi::nn::errors::ErrorCode;
pub use wasi::nn::tensor::TensorType;

use wasi::nn::{errors, graph, inference, tensor};

/// A loaded graph: the model it names.
pub struct Graph(Arc<Model>);

/// An execution context: one sequence; its `Drop` frees the state and counts it out.
pub struct ExecContext {
    ctx: Context,
    live: Arc<AtomicI64>,
}

impl Drop for ExecContext {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An error resource.
pub struct ErrorRes {
    code: ErrorCode,
    data: String,
}

/// The wasi-nn state of one request's store.
pub struct NnCtx {
    models: Arc<Models>,
    /// Live contexts server-wide (the `tinystate_nn_contexts` gauge).
    live: Arc<AtomicI64>,
    contexts: usize,
    tensor_bytes: usize,
}

impl NnCtx {
    /// No contexts yet; `live` counts contexts across all stores.
    pub fn new(models: Arc<Models>, live: Arc<AtomicI64>) -> Self {
        Self { models, live, contexts: 0, tensor_bytes: 0 }
    }
}

/// What the bindings borrow from the store for one call.
pub struct NnView<'a> {
    /// This request's wasi-nn state.
    pub ctx: &'a mut NnCtx,
    /// The request's resource table (shared with WASI).
    pub table: &'a mut ResourceTable,
}

/// Marks [`NnView`] as the data the bindings get.
pub struct WasiNn;

impl HasData for WasiNn {
    type Data<'a> = NnView<'a>;
}

/// Adds the wasi-nn imports to `linker`; `view` gives each call its store's [`NnView`].
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> NnView<'_>,
) -> wasmtime::Result<()> {
    Ml::add_to_linker::<T, WasiNn>(linker, view)
}

impl NnView<'_> {
    /// Stores an error resource for `e`.
    fn error(&mut self, e: NnError) -> wasmtime::Result<Resource<ErrorRes>> {
        tracing::debug!("wasi-nn error for the guest: {e}");
        Ok(self.table.push(ErrorRes { code: e.code(), data: e.to_string() })?)
    }

    /// Stores a tensor, counting its bytes against [`contract::MAX_TENSOR_BYTES`] (a trap past
    /// it: a constructor cannot return an error).
    fn push_tensor(&mut self, t: TensorParts) -> wasmtime::Result<Resource<TensorParts>> {
        let total = self.ctx.tensor_bytes.saturating_add(t.data.len());
        if total > contract::MAX_TENSOR_BYTES {
            wasmtime::bail!(
                "wasi-nn: the instance holds {total} bytes of tensors, over the limit of {}",
                contract::MAX_TENSOR_BYTES
            );
        }
        self.ctx.tensor_bytes = total;
        Ok(self.table.push(t)?)
    }
}

impl tensor::Host for NnView<'_> {}
impl errors::Host for NnView<'_> {}
impl inference::Host for NnView<'_> {}

impl tensor::HostTensor for NnView<'_> {
    async fn new(
        &mut self,
        dims: tensor::TensorDimensions,
        ty: TensorType,
        data: tensor::TensorData,
    ) -> wasmtime::Result<Resource<TensorParts>> {
        self.push_tensor(TensorParts { dims, ty, data })
    }

    async fn dimensions(&mut self, t: Resource<TensorParts>) -> wasmtime::Result<Vec<u32>> {
        Ok(self.table.get(&t)?.dims.clone())
    }

    async fn ty(&mut self, t: Resource<TensorParts>) -> wasmtime::Result<TensorType> {
        Ok(self.table.get(&t)?.ty)
    }

    async fn data(&mut self, t: Resource<TensorParts>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table.get(&t)?.data.clone())
    }

    async fn drop(&mut self, t: Resource<TensorParts>) -> wasmtime::Result<()> {
        let t = self.table.delete(t)?;
        self.ctx.tensor_bytes = self.ctx.tensor_bytes.saturating_sub(t.data.len());
        Ok(())
    }
}

impl errors::HostError for NnView<'_> {
    async fn code(&mut self, e: Resource<ErrorRes>) -> wasmtime::Result<ErrorCode> {
        Ok(self.table.get(&e)?.code)
    }

    async fn data(&mut self, e: Resource<ErrorRes>) -> wasmtime::Result<String> {
        Ok(self.table.get(&e)?.data.clone())
    }

    async fn drop(&mut self, e: Resource<ErrorRes>) -> wasmtime::Result<()> {
        self.table.delete(e)?;
        Ok(())
    }
}

type GraphResult = Result<Resource<Graph>, Resource<ErrorRes>>;

impl graph::Host for NnView<'_> {
    async fn load(
        &mut self,
        _builder: Vec<graph::GraphBuilder>,
        _encoding: graph::GraphEncoding,
        _target: graph::ExecutionTarget,
    ) -> wasmtime::Result<GraphResult> {
        Ok(Err(self.error(NnError::LoadFromBytes)?))
    }

    async fn load_by_name(&mut self, name: String) -> wasmtime::Result<GraphResult> {
        match self.ctx.models.get(&name) {
            Ok(m) => Ok(Ok(self.table.push(Graph(m))?)),
            Err(e) => Ok(Err(self.error(e)?)),
        }
    }
}

impl graph::HostGraph for NnView<'_> {
    async fn init_execution_context(
        &mut self,
        g: Resource<Graph>,
    ) -> wasmtime::Result<Result<Resource<ExecContext>, Resource<ErrorRes>>> {
        let max = contract::MAX_CONTEXTS_PER_INSTANCE;
        let made = match self.ctx.contexts {
            n if n >= max => Err(NnError::TooManyContexts { max }),
            _ => {
                let model = self.table.get(&g)?.0.clone();
                model.new_context().await
            }
        };
        match made {
            Ok(ctx) => {
                self.ctx.contexts += 1;
                self.ctx.live.fetch_add(1, Ordering::Relaxed);
                Ok(Ok(self.table.push(ExecContext { ctx, live: self.ctx.live.clone() })?))
            }
            Err(e) => Ok(Err(self.error(e)?)),
        }
    }

    async fn drop(&mut self, g: Resource<Graph>) -> wasmtime::Result<()> {
        self.table.delete(g)?;
        Ok(())
    }
}

type Outputs = Result<Vec<(String, Resource<TensorParts>)>, Resource<ErrorRes>>;

impl inference::HostGraphExecutionContext for NnView<'_> {
    async fn compute(
        &mut self,
        c: Resource<ExecContext>,
        inputs: Vec<(String, Resource<TensorParts>)>,
    ) -> wasmtime::Result<Outputs> {
        let parsed = {
            let mut tensors = Vec::with_capacity(inputs.len());
            for (name, t) in &inputs {
                tensors.push((name.as_str(), self.table.get(t)?));
            }
            contract::parse_inputs(tensors.into_iter())
        };
        // The guest handed over ownership of the input tensors.
        for (_, t) in inputs {
            tensor::HostTensor::drop(self, t).await?;
        }
        let inputs = match parsed {
            Ok(i) => i,
            Err(e) => return Ok(Err(self.error(e)?)),
        };
        match self.table.get_mut(&c)?.ctx.compute_inputs(inputs).await {
            Ok(output) => {
                let (name, tensor) = output.into_tensor();
                let t = self.push_tensor(tensor)?;
                Ok(Ok(vec![(name.to_owned(), t)]))
            }
            Err(e) => Ok(Err(self.error(e)?)),
        }
    }

    async fn drop(&mut self, c: Resource<ExecContext>) -> wasmtime::Result<()> {
        self.table.delete(c)?;
        self.ctx.contexts = self.ctx.contexts.saturating_sub(1);
        Ok(())
    }
}
