#include "models/parallel/nccl_comm.h"

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <nccl.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status/status_macros.h"
#include "models/parallel/rendezvous.h"

// Non-blocking communicators (ncclConfig_t.blocking, ncclCommInitRankConfig, ncclInProgress)
// came with NCCL 2.14; the wait limit depends on them.
#if NCCL_VERSION_CODE < NCCL_VERSION(2, 14, 0)
#error "nccl_comm.cc needs NCCL >= 2.14 (non-blocking communicators)"
#endif

namespace diffmesh::models::parallel {
namespace {

absl::Status NcclError(ncclResult_t result, const char* expr, const char* file, int line,
                       ncclComm_t comm) {
  std::string message = absl::StrCat(file, ":", line, ": ", expr, " failed: ",
                                      ncclGetErrorString(result));
  const char* last = ncclGetLastError(comm);
  if (last != nullptr && last[0] != '\0') absl::StrAppend(&message, " (", last, ")");
  switch (result) {
    case ncclInvalidArgument:
    case ncclInvalidUsage:
      return absl::InvalidArgumentError(message);
    case ncclSystemError:
    case ncclRemoteError:
      return absl::UnavailableError(message);
    default:
      return absl::InternalError(message);
  }
}

absl::Status CudaError(cudaError_t result, const char* expr, const char* file, int line) {
  return absl::InternalError(absl::StrCat(file, ":", line, ": ", expr, " failed: ",
                                          cudaGetErrorName(result), ": ",
                                          cudaGetErrorString(result)));
}

}  // namespace

// Every NCCL / CUDA call goes through these: the failure becomes a Status with the call site.
#define DIFFMESH_NCCL_CHECK(expr, comm)                                      \
  do {                                                                       \
    const ncclResult_t _nccl_result = (expr);                                \
    if (_nccl_result != ncclSuccess) {                                       \
      return NcclError(_nccl_result, #expr, __FILE__, __LINE__, (comm));     \
    }                                                                        \
  } while (0)

// The same for a call on a non-blocking communicator, where ncclInProgress means "enqueued, still
// being set up": the caller settles it (NcclCommunicator::Settle) before the next call.
#define DIFFMESH_NCCL_ENQUEUE(expr, comm)                                    \
  do {                                                                       \
    const ncclResult_t _nccl_result = (expr);                                \
    if (_nccl_result != ncclSuccess && _nccl_result != ncclInProgress) {     \
      return NcclError(_nccl_result, #expr, __FILE__, __LINE__, (comm));     \
    }                                                                        \
  } while (0)

#define DIFFMESH_CUDA_CHECK(expr)                                            \
  do {                                                                       \
    const cudaError_t _cuda_result = (expr);                                 \
    if (_cuda_result != cudaSuccess) {                                       \
      return CudaError(_cuda_result, #expr, __FILE__, __LINE__);             \
    }                                                                        \
  } while (0)

namespace {

cudaStream_t CurrentStream(int device) {
  return c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)).stream();
}

// NCCL's element type for reductions, if it has one.
std::optional<ncclDataType_t> NcclType(at::ScalarType type) {
  switch (type) {
    case at::kFloat:
      return ncclFloat32;
    case at::kDouble:
      return ncclFloat64;
    case at::kHalf:
      return ncclFloat16;
    case at::kBFloat16:
      return ncclBfloat16;
    case at::kInt:
      return ncclInt32;
    case at::kLong:
      return ncclInt64;
    case at::kByte:
      return ncclUint8;
    case at::kChar:
      return ncclInt8;
    default:
      return std::nullopt;
  }
}

ncclRedOp_t NcclOp(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return ncclSum;
    case ReduceOp::kAvg:
      return ncclAvg;
    case ReduceOp::kMax:
      return ncclMax;
    case ReduceOp::kMin:
      return ncclMin;
  }
  return ncclSum;
}

int64_t RowBytes(const at::Tensor& t) {
  int64_t n = t.element_size();
  for (int64_t d = 1; d < t.dim(); ++d) n *= t.size(d);
  return n;
}

}  // namespace

absl::StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Create(
    const RendezvousOptions& options, const NcclOptions& nccl) {
  RETURN_IF_ERROR(CheckRendezvous(options));
  int count = 0;
  DIFFMESH_CUDA_CHECK(cudaGetDeviceCount(&count));
  if (count == 0) return absl::FailedPreconditionError("NCCL communicator: no CUDA device");
  const int device = nccl.device >= 0 ? nccl.device : options.rank % count;
  if (device >= count) {
    return absl::InvalidArgumentError(
        absl::StrCat("NCCL communicator: device ", device, " but ", count, " visible"));
  }
  ASSIGN_OR_RETURN(c10::intrusive_ptr<c10d::Store> tcp, ConnectStore(options));
  return CreateOnStore(std::move(tcp), "nccl", options, nccl);
}

absl::StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::CreateOnStore(
    c10::intrusive_ptr<c10d::Store> store, const std::string& prefix,
    const RendezvousOptions& options, const NcclOptions& nccl) {
  RETURN_IF_ERROR(CheckRendezvous(options));
  int count = 0;
  DIFFMESH_CUDA_CHECK(cudaGetDeviceCount(&count));
  if (count == 0) return absl::FailedPreconditionError("NCCL communicator: no CUDA device");
  const int device = nccl.device >= 0 ? nccl.device : options.rank % count;
  if (device >= count) {
    return absl::InvalidArgumentError(
        absl::StrCat("NCCL communicator: device ", device, " but ", count, " visible"));
  }
  c10::intrusive_ptr<c10d::Store> prefixed =
      c10::make_intrusive<c10d::PrefixStore>(prefix, std::move(store));
  ASSIGN_OR_RETURN(ncclComm * comm,
                   InitComm(*prefixed, options.rank, options.world_size, device,
                            absl::Now() + absl::FromChrono(options.timeout), /*limit=*/nullptr));
  return std::unique_ptr<NcclCommunicator>(new NcclCommunicator(
      options.rank, options.world_size, device, comm, std::move(prefixed), nccl, options.timeout));
}

absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(
    const RendezvousOptions& options, const NcclOptions& nccl) {
  ASSIGN_OR_RETURN(std::unique_ptr<NcclCommunicator> comm, NcclCommunicator::Create(options, nccl));
  return std::unique_ptr<Communicator>(std::move(comm));
}

absl::StatusOr<ncclComm*> NcclCommunicator::InitComm(c10d::Store& store, int rank, int size,
                                                     int device, absl::Time until,
                                                     const WaitLimit* limit) {
  ncclUniqueId id;
  const std::string key = "unique_id";
  try {
    if (rank == 0) {
      DIFFMESH_NCCL_CHECK(ncclGetUniqueId(&id), nullptr);
      const auto* bytes = reinterpret_cast<const uint8_t*>(&id);
      store.set(key, std::vector<uint8_t>(bytes, bytes + sizeof(id)));
    } else {
      // Blocks until rank 0 has published it, up to the store's timeout.
      const std::vector<uint8_t> bytes = store.get(key);
      if (bytes.size() != sizeof(id)) {
        return absl::InternalError(absl::StrCat("NCCL unique id of ", bytes.size(),
                                                " bytes in the store, expected ", sizeof(id)));
      }
      std::memcpy(&id, bytes.data(), sizeof(id));
    }
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("NCCL unique id exchange (rank ", rank, " of ",
                                               size, "): ", e.what()));
  }
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // no NCCL call may block the host beyond the wait limit
  ncclComm_t comm = nullptr;
  DIFFMESH_NCCL_ENQUEUE(ncclCommInitRankConfig(&comm, size, id, rank, &config), nullptr);
  // The initialization connects to the other ranks in the background: poll it, and abort it
  // when a rank does not come.
  absl::Duration pause = absl::Microseconds(100);
  while (true) {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t queried = ncclCommGetAsyncError(comm, &state);
    absl::Status why;
    if (queried != ncclSuccess) {
      why = NcclError(queried, "ncclCommGetAsyncError", __FILE__, __LINE__, comm);
    } else if (state == ncclSuccess) {
      return comm;
    } else if (state != ncclInProgress) {
      why = NcclError(state, "ncclCommInitRankConfig", __FILE__, __LINE__, comm);
    } else if (absl::Now() >= until) {
      why = absl::DeadlineExceededError(absl::StrCat(
          "NCCL communicator init (rank ", rank, " of ", size,
          "): the other ranks did not all join within the rendezvous timeout"));
    } else if (limit != nullptr) {
      if (absl::Status s = limit->Check(); !s.ok()) {
        why = absl::Status(s.code(), absl::StrCat("NCCL communicator init (rank ", rank, " of ",
                                                  size, "): ", s.message()));
      }
    }
    if (!why.ok()) {
      ncclCommAbort(comm);  // its own failure adds nothing to `why`
      return why;
    }
    absl::SleepFor(pause);
    pause = std::min(pause * 2, absl::Milliseconds(10));
  }
}

NcclCommunicator::NcclCommunicator(int rank, int size, int device, ncclComm* comm,
                                   c10::intrusive_ptr<c10d::Store> store,
                                   const NcclOptions& options, std::chrono::milliseconds timeout)
    : Communicator(rank, size),
      device_(device),
      store_(std::move(store)),
      options_(options),
      timeout_(timeout),
      comm_(comm) {
  watchdog_ = std::thread([this] { Watch(); });
}

NcclCommunicator::~NcclCommunicator() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (watchdog_.joinable()) watchdog_.join();
  // See NcclOptions::abort_in_destructor: no NCCL call unless asked for.
  if (usable() && options_.abort_in_destructor) Abort().IgnoreError();
  // Events of unfinished operations are released by CUDA once they complete; errors (a CUDA
  // context already gone at exit) change nothing.
  for (const Pending& p : pending_) cudaEventDestroy(p.event);
  for (cudaEvent_t e : spare_) cudaEventDestroy(e);
}

at::Device NcclCommunicator::device() const {
  return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device_));
}

bool NcclCommunicator::usable() const {
  std::lock_guard<std::mutex> lock(mu_);
  return comm_ != nullptr;
}

absl::Status NcclCommunicator::UsableLocked() const {
  if (comm_ != nullptr) return absl::OkStatus();
  if (!aborted_.ok()) return aborted_;
  return absl::FailedPreconditionError("NCCL communicator was aborted or destroyed");
}

void NcclCommunicator::AbortLocked(absl::Status why) {
  if (comm_ == nullptr) return;
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
  const ncclResult_t result = ncclCommAbort(comm_);
  if (result != ncclSuccess) {
    std::fprintf(stderr, "NCCL communicator (rank %d of %d): ncclCommAbort: %s\n", rank(), size(),
                 ncclGetErrorString(result));
  }
  comm_ = nullptr;
  aborted_ = std::move(why);
  // The aborted kernels return, so these events complete; CUDA frees them then.
  for (const Pending& p : pending_) cudaEventDestroy(p.event);
  pending_.clear();
}

absl::Status NcclCommunicator::Abort() {
  std::lock_guard<std::mutex> lock(mu_);
  RETURN_IF_ERROR(UsableLocked());
  AbortLocked(absl::FailedPreconditionError("NCCL communicator was aborted by its owner"));
  return absl::OkStatus();
}

absl::Status NcclCommunicator::Destroy() {
  std::lock_guard<std::mutex> lock(mu_);
  RETURN_IF_ERROR(UsableLocked());
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
  ncclComm_t comm = comm_;
  comm_ = nullptr;
  aborted_ = absl::FailedPreconditionError("NCCL communicator was destroyed");
  // Non-blocking: ncclCommFinalize flushes the enqueued work in the background; poll it within
  // the communicator's timeout, then free it (or abort it when it does not finish).
  absl::Status finalized;
  const ncclResult_t started = ncclCommFinalize(comm);
  if (started != ncclSuccess && started != ncclInProgress) {
    finalized = NcclError(started, "ncclCommFinalize(comm)", __FILE__, __LINE__, comm);
  }
  const absl::Time until = absl::Now() + absl::FromChrono(timeout_);
  absl::Duration pause = absl::Microseconds(100);
  while (finalized.ok()) {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t queried = ncclCommGetAsyncError(comm, &state);
    if (queried != ncclSuccess) {
      finalized = NcclError(queried, "ncclCommGetAsyncError", __FILE__, __LINE__, comm);
    } else if (state == ncclSuccess) {
      break;
    } else if (state != ncclInProgress) {
      finalized = NcclError(state, "ncclCommFinalize", __FILE__, __LINE__, comm);
    } else if (absl::Now() >= until) {
      finalized = absl::DeadlineExceededError(
          "NCCL communicator: its enqueued work did not finish within the timeout");
    } else {
      absl::SleepFor(pause);
      pause = std::min(pause * 2, absl::Milliseconds(10));
    }
  }
  if (!finalized.ok()) {
    ncclCommAbort(comm);
    return finalized;
  }
  DIFFMESH_NCCL_CHECK(ncclCommDestroy(comm), nullptr);
  return absl::OkStatus();
}

absl::Status NcclCommunicator::CheckAsyncError() {
  std::lock_guard<std::mutex> lock(mu_);
  RETURN_IF_ERROR(UsableLocked());
  ncclResult_t async = ncclSuccess;
  DIFFMESH_NCCL_CHECK(ncclCommGetAsyncError(comm_, &async), comm_);
  if (async != ncclSuccess && async != ncclInProgress) {
    return NcclError(async, "asynchronous NCCL error", __FILE__, __LINE__, comm_);
  }
  return absl::OkStatus();
}

absl::Status NcclCommunicator::StopReasonLocked(const char* op, const WaitLimit* limit) {
  ncclResult_t async = ncclSuccess;
  const ncclResult_t queried = ncclCommGetAsyncError(comm_, &async);
  if (queried != ncclSuccess) {
    return NcclError(queried, "ncclCommGetAsyncError", __FILE__, __LINE__, comm_);
  }
  if (async != ncclSuccess && async != ncclInProgress) {
    absl::Status e = NcclError(async, "asynchronous NCCL error", __FILE__, __LINE__, comm_);
    return absl::Status(e.code(), absl::StrCat("NCCL ", op, " (rank ", rank(), " of ", size(),
                                               "): ", e.message(),
                                               "; the communicator was aborted"));
  }
  if (limit == nullptr) return absl::OkStatus();
  absl::Status s = limit->Check();
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat("NCCL ", op, " (rank ", rank(), " of ", size(),
                                             ") did not finish within its wait limit: ",
                                             s.message(), "; the communicator was aborted"));
}

absl::Status NcclCommunicator::Settle(const char* op, const WaitLimit* limit) {
  absl::Duration pause = absl::Microseconds(20);
  while (true) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      RETURN_IF_ERROR(UsableLocked());
      ncclResult_t state = ncclSuccess;
      DIFFMESH_NCCL_CHECK(ncclCommGetAsyncError(comm_, &state), comm_);
      if (state == ncclSuccess) return absl::OkStatus();
      absl::Status why = StopReasonLocked(op, limit);
      if (!why.ok()) {
        AbortLocked(why);
        return why;
      }
    }
    absl::SleepFor(pause);
    pause = std::min(pause * 2, absl::Milliseconds(1));
  }
}

absl::Status NcclCommunicator::Launch(
    const char* op, const std::function<absl::Status(ncclComm*, CUstream_st*)>& enqueue) {
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
  const cudaStream_t stream = CurrentStream(device_);
  const std::shared_ptr<WaitLimit> limit = wait_limit();
  {
    std::lock_guard<std::mutex> lock(mu_);
    RETURN_IF_ERROR(UsableLocked());
    // A limit that ended while no operation was watched (the membership aborted it between
    // requests): the peers are not in step any more, so nothing new is started.
    if (limit != nullptr && limit->aborted()) {
      absl::Status why = StopReasonLocked(op, limit.get());
      AbortLocked(why);
      return why;
    }
    absl::Status enqueued = enqueue(comm_, stream);
    if (!enqueued.ok()) {
      // A call that failed inside the enqueue leaves the communicator in an unknown state.
      AbortLocked(enqueued);
      return enqueued;
    }
  }
  RETURN_IF_ERROR(Settle(op, limit.get()));
  if (limit == nullptr) return absl::OkStatus();
  std::lock_guard<std::mutex> lock(mu_);
  RETURN_IF_ERROR(UsableLocked());
  cudaEvent_t event = nullptr;
  if (!spare_.empty()) {
    event = spare_.back();
    spare_.pop_back();
  } else {
    DIFFMESH_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  }
  const cudaError_t recorded = cudaEventRecord(event, stream);
  if (recorded != cudaSuccess) {
    cudaEventDestroy(event);
    return CudaError(recorded, "cudaEventRecord", __FILE__, __LINE__);
  }
  pending_.push_back(Pending{event, op, limit});
  return absl::OkStatus();
}

void NcclCommunicator::Watch() {
  // The watchdog's CUDA calls (event queries, the abort) act on this communicator's device.
  cudaSetDevice(device_);
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    wake_.wait_for(lock, absl::ToChronoMilliseconds(kWaitPollInterval));
    if (stopping_) return;
    if (comm_ == nullptr) continue;
    while (!pending_.empty()) {
      const cudaError_t done = cudaEventQuery(pending_.front().event);
      if (done == cudaErrorNotReady) break;
      // Done (or failed: the stream's error reaches its next synchronization anyway).
      if (done == cudaSuccess) {
        spare_.push_back(pending_.front().event);
      } else {
        cudaEventDestroy(pending_.front().event);
      }
      pending_.pop_front();
    }
    if (pending_.empty()) continue;
    const Pending& oldest = pending_.front();
    absl::Status why = StopReasonLocked(oldest.op, oldest.limit.get());
    if (!why.ok()) {
      std::fprintf(stderr, "%s\n", std::string(why.message()).c_str());
      AbortLocked(why);
    }
  }
}

absl::Status NcclCommunicator::DoSynchronize(const char* op) {
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
  const std::shared_ptr<WaitLimit> limit = wait_limit();
  cudaEvent_t event = nullptr;
  DIFFMESH_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  const cudaError_t recorded = cudaEventRecord(event, CurrentStream(device_));
  if (recorded != cudaSuccess) {
    cudaEventDestroy(event);
    return CudaError(recorded, "cudaEventRecord", __FILE__, __LINE__);
  }
  // Polled rather than cudaEventSynchronize: the wait must end with the limit, and a spinning
  // NCCL kernel ends only with ncclCommAbort.
  absl::Status status;
  absl::Duration pause = absl::Microseconds(20);
  while (true) {
    const cudaError_t done = cudaEventQuery(event);
    if (done == cudaSuccess) break;
    if (done != cudaErrorNotReady) {
      status = CudaError(done, "cudaEventQuery", __FILE__, __LINE__);
      break;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      status = UsableLocked();
      if (status.ok()) {
        status = StopReasonLocked(op, limit.get());
        if (!status.ok()) AbortLocked(status);
      }
    }
    if (!status.ok()) break;
    absl::SleepFor(pause);
    pause = std::min(pause * 2, absl::Milliseconds(1));
  }
  cudaEventDestroy(event);
  RETURN_IF_ERROR(status);
  // The event also completes when an abort (here or by the watchdog) released the kernels: the
  // data is then undefined.
  std::lock_guard<std::mutex> lock(mu_);
  return UsableLocked();
}

absl::Status NcclCommunicator::DoAllReduce(at::Tensor& tensor, ReduceOp op) {
  std::optional<ncclDataType_t> type = NcclType(tensor.scalar_type());
  if (!type) {
    // bool, int16, …: reduce in int32 and cast back (bool max/min stay any/all).
    if (!at::isIntegralType(tensor.scalar_type(), /*includeBool=*/true)) {
      return absl::InvalidArgumentError(absl::StrCat("NCCL AllReduce: no reduction for dtype ",
                                                     c10::toString(tensor.scalar_type())));
    }
    at::Tensor wide = tensor.to(at::kInt);
    RETURN_IF_ERROR(DoAllReduce(wide, op));
    tensor.copy_(wide);
    return absl::OkStatus();
  }
  return Launch("AllReduce", [&](ncclComm_t comm, cudaStream_t stream) -> absl::Status {
    DIFFMESH_NCCL_ENQUEUE(ncclAllReduce(tensor.data_ptr(), tensor.data_ptr(), tensor.numel(),
                                        *type, NcclOp(op), comm, stream),
                          comm);
    return absl::OkStatus();
  });
}

absl::Status NcclCommunicator::DoAllGather(at::Tensor& output, const at::Tensor& input) {
  // Bytes: every dtype moves, whatever NCCL's type list holds.
  return Launch("AllGather", [&](ncclComm_t comm, cudaStream_t stream) -> absl::Status {
    DIFFMESH_NCCL_ENQUEUE(ncclAllGather(input.data_ptr(), output.data_ptr(), input.nbytes(),
                                        ncclUint8, comm, stream),
                          comm);
    return absl::OkStatus();
  });
}

absl::Status NcclCommunicator::DoAllToAll(at::Tensor& output, const at::Tensor& input,
                                          const std::vector<int64_t>& output_splits,
                                          const std::vector<int64_t>& input_splits) {
  const int64_t row = RowBytes(input);
  if (row == 0) return absl::OkStatus();  // identical on every rank: nothing moves anywhere
  const auto* in = static_cast<const char*>(input.data_ptr());
  auto* out = static_cast<char*>(output.data_ptr());
  return Launch("AllToAll", [&](ncclComm_t comm, cudaStream_t stream) -> absl::Status {
    // NCCL has no all-to-all-v: grouped point-to-point, one pair per peer. The block a rank
    // keeps is a device copy.
    DIFFMESH_NCCL_CHECK(ncclGroupStart(), comm);
    absl::Status status;
    int64_t in_offset = 0, out_offset = 0;
    for (int peer = 0; peer < size() && status.ok(); ++peer) {
      const int64_t send_bytes = input_splits[peer] * row;
      const int64_t recv_bytes = output_splits[peer] * row;
      if (peer == rank()) {
        if (send_bytes > 0) {
          const cudaError_t copied = cudaMemcpyAsync(out + out_offset, in + in_offset, send_bytes,
                                                     cudaMemcpyDeviceToDevice, stream);
          if (copied != cudaSuccess) {
            status = CudaError(copied, "cudaMemcpyAsync", __FILE__, __LINE__);
          }
        }
      } else {
        // Zero-byte pairs are skipped on both sides (the sender's count is the receiver's).
        if (send_bytes > 0) {
          const ncclResult_t sent =
              ncclSend(in + in_offset, send_bytes, ncclUint8, peer, comm, stream);
          if (sent != ncclSuccess && sent != ncclInProgress) {
            status = NcclError(sent, "ncclSend", __FILE__, __LINE__, comm);
          }
        }
        if (status.ok() && recv_bytes > 0) {
          const ncclResult_t received =
              ncclRecv(out + out_offset, recv_bytes, ncclUint8, peer, comm, stream);
          if (received != ncclSuccess && received != ncclInProgress) {
            status = NcclError(received, "ncclRecv", __FILE__, __LINE__, comm);
          }
        }
      }
      in_offset += send_bytes;
      out_offset += recv_bytes;
    }
    // The group must be closed even after an error inside it.
    DIFFMESH_NCCL_ENQUEUE(ncclGroupEnd(), comm);
    return status;
  });
}

absl::Status NcclCommunicator::DoBroadcast(at::Tensor& tensor, int root) {
  return Launch("Broadcast", [&](ncclComm_t comm, cudaStream_t stream) -> absl::Status {
    DIFFMESH_NCCL_ENQUEUE(ncclBroadcast(tensor.data_ptr(), tensor.data_ptr(), tensor.nbytes(),
                                        ncclUint8, root, comm, stream),
                          comm);
    return absl::OkStatus();
  });
}

absl::Status NcclCommunicator::DoSend(const at::Tensor& tensor, int peer, int /*tag*/) {
  return Launch("Send", [&](ncclComm_t comm, cudaStream_t stream) -> absl::Status {
    DIFFMESH_NCCL_ENQUEUE(
        ncclSend(tensor.data_ptr(), tensor.nbytes(), ncclUint8, peer, comm, stream), comm);
    return absl::OkStatus();
  });
}

absl::Status NcclCommunicator::DoRecv(at::Tensor& tensor, int peer, int /*tag*/) {
  return Launch("Recv", [&](ncclComm_t comm, cudaStream_t stream) -> absl::Status {
    DIFFMESH_NCCL_ENQUEUE(
        ncclRecv(tensor.data_ptr(), tensor.nbytes(), ncclUint8, peer, comm, stream), comm);
    return absl::OkStatus();
  });
}

absl::Status NcclCommunicator::DoSendRecv(const at::Tensor& send, int dst, at::Tensor& recv,
                                          int src, int /*tag*/) {
  return Launch("SendRecv", [&](ncclComm_t comm, cudaStream_t stream) -> absl::Status {
    // One group, so that every rank's send can progress while it waits for its receive.
    DIFFMESH_NCCL_CHECK(ncclGroupStart(), comm);
    absl::Status status;
    if (send.nbytes() > 0) {
      const ncclResult_t sent =
          ncclSend(send.data_ptr(), send.nbytes(), ncclUint8, dst, comm, stream);
      if (sent != ncclSuccess && sent != ncclInProgress) {
        status = NcclError(sent, "ncclSend", __FILE__, __LINE__, comm);
      }
    }
    if (status.ok() && recv.nbytes() > 0) {
      const ncclResult_t received =
          ncclRecv(recv.data_ptr(), recv.nbytes(), ncclUint8, src, comm, stream);
      if (received != ncclSuccess && received != ncclInProgress) {
        status = NcclError(received, "ncclRecv", __FILE__, __LINE__, comm);
      }
    }
    DIFFMESH_NCCL_ENQUEUE(ncclGroupEnd(), comm);
    return status;
  });
}

absl::Status NcclCommunicator::DoBarrier() {
  // NCCL has no barrier: a one-element all-reduce, then wait for it on the host.
  at::Tensor token = at::zeros({1}, at::TensorOptions().dtype(at::kInt).device(device()));
  RETURN_IF_ERROR(DoAllReduce(token, ReduceOp::kSum));
  RETURN_IF_ERROR(DoSynchronize("Barrier"));
  return CheckAsyncError();
}

absl::StatusOr<std::unique_ptr<Communicator>> NcclCommunicator::DoSplit(
    const std::vector<int>& ranks, int new_rank) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    RETURN_IF_ERROR(UsableLocked());
  }
  // Every rank counts every split, so the n-th split has the same store prefix everywhere; only
  // the members meet there (the group's rank 0 publishes the id).
  const int64_t id = ++splits_;
  if (new_rank < 0) return std::unique_ptr<Communicator>();
  c10::intrusive_ptr<c10d::Store> store =
      c10::make_intrusive<c10d::PrefixStore>(absl::StrCat("split", id), store_);
  const int size = static_cast<int>(ranks.size());
  ASSIGN_OR_RETURN(ncclComm * comm,
                   InitComm(*store, new_rank, size, device_,
                            absl::Now() + absl::FromChrono(timeout_), wait_limit().get()));
  return std::unique_ptr<Communicator>(new NcclCommunicator(
      new_rank, size, device_, comm, std::move(store), options_, timeout_));
}

}  // namespace diffmesh::models::parallel
