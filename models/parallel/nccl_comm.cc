#include "models/parallel/nccl_comm.h"

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <nccl.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>

#include <cstring>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "models/parallel/rendezvous.h"

namespace diffmesh::models::parallel {
namespace {

absl::Status NcclError(ncclResult_t result, const char* expr, const char* file, int line,
                       ncclComm_t comm) {
  std::string message = absl::StrCat(file, ":", line, ": ", expr, " failed: ",
                                      ncclGetErrorString(result));
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 13, 0)
  const char* last = ncclGetLastError(comm);
  if (last != nullptr && last[0] != '\0') absl::StrAppend(&message, " (", last, ")");
#endif
  switch (result) {
    case ncclInvalidArgument:
    case ncclInvalidUsage:
      return absl::InvalidArgumentError(message);
    case ncclSystemError:
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 12, 0)
    case ncclRemoteError:
#endif
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
  ASSIGN_OR_RETURN(ncclComm * comm, InitComm(*prefixed, options.rank, options.world_size, device));
  return std::unique_ptr<NcclCommunicator>(new NcclCommunicator(
      options.rank, options.world_size, device, comm, std::move(prefixed), nccl));
}

absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(
    const RendezvousOptions& options, const NcclOptions& nccl) {
  ASSIGN_OR_RETURN(std::unique_ptr<NcclCommunicator> comm, NcclCommunicator::Create(options, nccl));
  return std::unique_ptr<Communicator>(std::move(comm));
}

absl::StatusOr<ncclComm*> NcclCommunicator::InitComm(c10d::Store& store, int rank, int size,
                                                     int device) {
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
  ncclComm_t comm = nullptr;
  DIFFMESH_NCCL_CHECK(ncclCommInitRank(&comm, size, id, rank), nullptr);
  return comm;
}

NcclCommunicator::NcclCommunicator(int rank, int size, int device, ncclComm* comm,
                                   c10::intrusive_ptr<c10d::Store> store,
                                   const NcclOptions& options)
    : Communicator(rank, size),
      device_(device),
      comm_(comm),
      store_(std::move(store)),
      options_(options) {}

NcclCommunicator::~NcclCommunicator() {
  // See NcclOptions::abort_in_destructor: no NCCL call unless asked for.
  if (comm_ != nullptr && options_.abort_in_destructor) Abort().IgnoreError();
}

at::Device NcclCommunicator::device() const {
  return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device_));
}

absl::Status NcclCommunicator::Usable() const {
  if (comm_ == nullptr) {
    return absl::FailedPreconditionError("NCCL communicator was aborted or destroyed");
  }
  return absl::OkStatus();
}

absl::Status NcclCommunicator::Abort() {
  RETURN_IF_ERROR(Usable());
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
  ncclComm_t comm = comm_;
  comm_ = nullptr;
  DIFFMESH_NCCL_CHECK(ncclCommAbort(comm), nullptr);
  return absl::OkStatus();
}

absl::Status NcclCommunicator::Destroy() {
  RETURN_IF_ERROR(Usable());
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
  ncclComm_t comm = comm_;
  comm_ = nullptr;
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 14, 0)
  DIFFMESH_NCCL_CHECK(ncclCommFinalize(comm), comm);
#endif
  DIFFMESH_NCCL_CHECK(ncclCommDestroy(comm), nullptr);
  return absl::OkStatus();
}

absl::Status NcclCommunicator::CheckAsyncError() {
  RETURN_IF_ERROR(Usable());
  ncclResult_t async = ncclSuccess;
  DIFFMESH_NCCL_CHECK(ncclCommGetAsyncError(comm_, &async), comm_);
  if (async != ncclSuccess
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 14, 0)
      && async != ncclInProgress
#endif
  ) {
    return NcclError(async, "asynchronous NCCL error", __FILE__, __LINE__, comm_);
  }
  return absl::OkStatus();
}

absl::Status NcclCommunicator::DoAllReduce(at::Tensor& tensor, ReduceOp op) {
  RETURN_IF_ERROR(Usable());
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
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
  DIFFMESH_NCCL_CHECK(ncclAllReduce(tensor.data_ptr(), tensor.data_ptr(), tensor.numel(), *type,
                                    NcclOp(op), comm_, CurrentStream(device_)),
                      comm_);
  return absl::OkStatus();
}

absl::Status NcclCommunicator::DoAllGather(at::Tensor& output, const at::Tensor& input) {
  RETURN_IF_ERROR(Usable());
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
  // Bytes: every dtype moves, whatever NCCL's type list holds.
  DIFFMESH_NCCL_CHECK(ncclAllGather(input.data_ptr(), output.data_ptr(), input.nbytes(), ncclUint8,
                                    comm_, CurrentStream(device_)),
                      comm_);
  return absl::OkStatus();
}

absl::Status NcclCommunicator::DoAllToAll(at::Tensor& output, const at::Tensor& input,
                                          const std::vector<int64_t>& output_splits,
                                          const std::vector<int64_t>& input_splits) {
  RETURN_IF_ERROR(Usable());
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
  const cudaStream_t stream = CurrentStream(device_);
  const int64_t row = RowBytes(input);
  if (row == 0) return absl::OkStatus();  // identical on every rank: nothing moves anywhere
  const auto* in = static_cast<const char*>(input.data_ptr());
  auto* out = static_cast<char*>(output.data_ptr());
  // NCCL has no all-to-all-v: grouped point-to-point, one pair per peer. The block a rank keeps
  // is a device copy.
  DIFFMESH_NCCL_CHECK(ncclGroupStart(), comm_);
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
            ncclSend(in + in_offset, send_bytes, ncclUint8, peer, comm_, stream);
        if (sent != ncclSuccess) status = NcclError(sent, "ncclSend", __FILE__, __LINE__, comm_);
      }
      if (status.ok() && recv_bytes > 0) {
        const ncclResult_t received =
            ncclRecv(out + out_offset, recv_bytes, ncclUint8, peer, comm_, stream);
        if (received != ncclSuccess) {
          status = NcclError(received, "ncclRecv", __FILE__, __LINE__, comm_);
        }
      }
    }
    in_offset += send_bytes;
    out_offset += recv_bytes;
  }
  // The group must be closed even after an error inside it.
  DIFFMESH_NCCL_CHECK(ncclGroupEnd(), comm_);
  return status;
}

absl::Status NcclCommunicator::DoBroadcast(at::Tensor& tensor, int root) {
  RETURN_IF_ERROR(Usable());
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
  DIFFMESH_NCCL_CHECK(ncclBroadcast(tensor.data_ptr(), tensor.data_ptr(), tensor.nbytes(),
                                    ncclUint8, root, comm_, CurrentStream(device_)),
                      comm_);
  return absl::OkStatus();
}

absl::Status NcclCommunicator::DoSend(const at::Tensor& tensor, int peer, int /*tag*/) {
  RETURN_IF_ERROR(Usable());
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
  DIFFMESH_NCCL_CHECK(ncclSend(tensor.data_ptr(), tensor.nbytes(), ncclUint8, peer, comm_,
                               CurrentStream(device_)),
                      comm_);
  return absl::OkStatus();
}

absl::Status NcclCommunicator::DoRecv(at::Tensor& tensor, int peer, int /*tag*/) {
  RETURN_IF_ERROR(Usable());
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
  DIFFMESH_NCCL_CHECK(ncclRecv(tensor.data_ptr(), tensor.nbytes(), ncclUint8, peer, comm_,
                               CurrentStream(device_)),
                      comm_);
  return absl::OkStatus();
}

absl::Status NcclCommunicator::DoSendRecv(const at::Tensor& send, int dst, at::Tensor& recv,
                                          int src, int /*tag*/) {
  RETURN_IF_ERROR(Usable());
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
  const cudaStream_t stream = CurrentStream(device_);
  // One group, so that every rank's send can progress while it waits for its receive.
  DIFFMESH_NCCL_CHECK(ncclGroupStart(), comm_);
  absl::Status status;
  if (send.nbytes() > 0) {
    const ncclResult_t sent = ncclSend(send.data_ptr(), send.nbytes(), ncclUint8, dst, comm_, stream);
    if (sent != ncclSuccess) status = NcclError(sent, "ncclSend", __FILE__, __LINE__, comm_);
  }
  if (status.ok() && recv.nbytes() > 0) {
    const ncclResult_t received =
        ncclRecv(recv.data_ptr(), recv.nbytes(), ncclUint8, src, comm_, stream);
    if (received != ncclSuccess) {
      status = NcclError(received, "ncclRecv", __FILE__, __LINE__, comm_);
    }
  }
  DIFFMESH_NCCL_CHECK(ncclGroupEnd(), comm_);
  return status;
}

absl::Status NcclCommunicator::DoBarrier() {
  RETURN_IF_ERROR(Usable());
  // NCCL has no barrier: a one-element all-reduce, then wait for it on the host.
  at::Tensor token = at::zeros({1}, at::TensorOptions().dtype(at::kInt).device(device()));
  RETURN_IF_ERROR(DoAllReduce(token, ReduceOp::kSum));
  DIFFMESH_CUDA_CHECK(cudaStreamSynchronize(CurrentStream(device_)));
  return CheckAsyncError();
}

absl::StatusOr<std::unique_ptr<Communicator>> NcclCommunicator::DoSplit(
    const std::vector<int>& ranks, int new_rank) {
  RETURN_IF_ERROR(Usable());
  // Every rank counts every split, so the n-th split has the same store prefix everywhere; only
  // the members meet there (the group's rank 0 publishes the id).
  const int64_t id = ++splits_;
  if (new_rank < 0) return std::unique_ptr<Communicator>();
  c10::intrusive_ptr<c10d::Store> store =
      c10::make_intrusive<c10d::PrefixStore>(absl::StrCat("split", id), store_);
  const int size = static_cast<int>(ranks.size());
  ASSIGN_OR_RETURN(ncclComm * comm, InitComm(*store, new_rank, size, device_));
  return std::unique_ptr<Communicator>(
      new NcclCommunicator(new_rank, size, device_, comm, std::move(store), options_));
}

}  // namespace diffmesh::models::parallel
