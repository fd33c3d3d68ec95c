#include "models/parallel/comm.h"

#include <ATen/MemoryOverlap.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status/status_macros.h"

namespace diffmesh::models::parallel {
namespace {

// Runs `fn` (which returns absl::Status) and turns an exception thrown by an ATen call inside it
// (allocation, copy) into an INTERNAL status, so that nothing throws across the API.
template <typename Fn>
absl::Status Guarded(const char* op, Fn&& fn) {
  try {
    return fn();
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(op, ": ", e.what()));
  }
}

std::string Shape(const at::Tensor& t) { return absl::StrCat("[", absl::StrJoin(t.sizes(), ", "), "]"); }

// Writable destination: each element must own distinct memory.
absl::Status CheckWritable(const at::Tensor& t, const char* what) {
  if (at::has_internal_overlap(t) == at::MemOverlap::Yes) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": output ", Shape(t), " has internal overlap (expanded or stride-0 view)"));
  }
  return absl::OkStatus();
}

// An output the backend can write: `t` itself when contiguous, else a fresh contiguous buffer
// that CopyBack() copies into `t` afterwards.
struct StagedOutput {
  at::Tensor& target;
  at::Tensor buffer;

  explicit StagedOutput(at::Tensor& t)
      : target(t), buffer(t.is_contiguous() ? t : at::empty(t.sizes(), t.options())) {}
  // For in-place operands the buffer starts as a copy of the current values.
  static StagedOutput InOut(at::Tensor& t) {
    StagedOutput s(t);
    if (!t.is_contiguous()) s.buffer.copy_(t);
    return s;
  }
  void CopyBack() {
    if (!buffer.is_same(target)) target.copy_(buffer);
  }
};

// Input as the backend needs it: contiguous, and a private copy when it shares memory with
// the output (the backend may write the output before it has read all of the input).
at::Tensor StageInput(const at::Tensor& input, const at::Tensor& output) {
  if (output.defined() && at::get_overlap_status(input, output) != at::MemOverlapStatus::No) {
    return input.clone(at::MemoryFormat::Contiguous);
  }
  return input.contiguous();
}

absl::Status CheckSplits(const std::vector<int64_t>& splits, int size, int64_t rows,
                         const char* which) {
  if (static_cast<int>(splits.size()) != size) {
    return absl::InvalidArgumentError(absl::StrCat("AllToAllSingle: ", which, " has ",
                                                   splits.size(), " entries, group size is ", size));
  }
  int64_t total = 0;
  for (int64_t s : splits) {
    if (s < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("AllToAllSingle: negative entry in ", which, " [", absl::StrJoin(splits, ", "), "]"));
    }
    total += s;
  }
  if (total != rows) {
    return absl::InvalidArgumentError(absl::StrCat("AllToAllSingle: ", which, " [",
                                                   absl::StrJoin(splits, ", "), "] sum to ", total,
                                                   ", dim 0 is ", rows));
  }
  return absl::OkStatus();
}

std::vector<int64_t> EqualSplits(int64_t rows, int size) {
  return std::vector<int64_t>(size, rows / size);
}

class SingleRankCommunicator final : public Communicator {
 public:
  explicit SingleRankCommunicator(at::Device device) : Communicator(0, 1), device_(device) {}

  const char* backend() const override { return "single"; }
  at::Device device() const override { return device_; }

 protected:
  absl::Status DoAllReduce(at::Tensor&, ReduceOp) override { return absl::OkStatus(); }
  absl::Status DoAllGather(at::Tensor& output, const at::Tensor& input) override {
    output.copy_(input);
    return absl::OkStatus();
  }
  absl::Status DoAllToAll(at::Tensor& output, const at::Tensor& input,
                          const std::vector<int64_t>&, const std::vector<int64_t>&) override {
    output.copy_(input);
    return absl::OkStatus();
  }
  absl::Status DoBroadcast(at::Tensor&, int) override { return absl::OkStatus(); }
  // Unreachable: the only peer of a one-rank group is itself, which the base class rejects.
  absl::Status DoSend(const at::Tensor&, int, int) override {
    return absl::FailedPreconditionError("Send in a single-rank group");
  }
  absl::Status DoRecv(at::Tensor&, int, int) override {
    return absl::FailedPreconditionError("Recv in a single-rank group");
  }
  absl::Status DoSendRecv(const at::Tensor&, int, at::Tensor&, int, int) override {
    return absl::FailedPreconditionError("SendRecv in a single-rank group");
  }
  absl::Status DoBarrier() override { return absl::OkStatus(); }
  absl::StatusOr<std::unique_ptr<Communicator>> DoSplit(const std::vector<int>&, int) override {
    return absl::FailedPreconditionError("Split of a single-rank group");
  }

 private:
  at::Device device_;
};

}  // namespace

const char* ReduceOpName(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "sum";
    case ReduceOp::kAvg:
      return "avg";
    case ReduceOp::kMax:
      return "max";
    case ReduceOp::kMin:
      return "min";
  }
  return "?";
}

std::unique_ptr<Communicator> CreateSingleRankCommunicator(at::Device device) {
  return std::make_unique<SingleRankCommunicator>(device);
}

absl::Status Communicator::CheckTensor(const at::Tensor& tensor, const char* what) const {
  if (!tensor.defined()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": undefined tensor"));
  }
  const at::Device dev = device();
  if (tensor.device().type() != dev.type() ||
      (dev.has_index() && tensor.device().index() != dev.index())) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": tensor on ", tensor.device().str(),
                                                   ", the ", backend(), " communicator works on ",
                                                   dev.str()));
  }
  if (tensor.is_sparse() || tensor.is_quantized()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": only dense tensors"));
  }
  return absl::OkStatus();
}

absl::Status Communicator::CheckPeer(int peer, const char* what) const {
  if (peer < 0 || peer >= size_) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": rank ", peer, " out of range [0, ", size_, ")"));
  }
  return absl::OkStatus();
}

absl::Status Communicator::AllReduce(at::Tensor& tensor, ReduceOp op) {
  RETURN_IF_ERROR(CheckTensor(tensor, "AllReduce"));
  RETURN_IF_ERROR(CheckWritable(tensor, "AllReduce"));
  if (op == ReduceOp::kAvg && !at::isFloatingType(tensor.scalar_type())) {
    return absl::InvalidArgumentError(absl::StrCat("AllReduce: avg needs a floating dtype, got ",
                                                   c10::toString(tensor.scalar_type())));
  }
  if (tensor.numel() == 0) return absl::OkStatus();
  return Guarded("AllReduce", [&]() -> absl::Status {
    StagedOutput out = StagedOutput::InOut(tensor);
    RETURN_IF_ERROR(DoAllReduce(out.buffer, op));
    out.CopyBack();
    return absl::OkStatus();
  });
}

absl::StatusOr<at::Tensor> Communicator::AllGather(const at::Tensor& input) {
  RETURN_IF_ERROR(CheckTensor(input, "AllGather"));
  if (input.dim() == 0) {
    return absl::InvalidArgumentError("AllGather: input needs at least one dimension");
  }
  std::vector<int64_t> shape = input.sizes().vec();
  shape[0] *= size_;
  at::Tensor output;
  RETURN_IF_ERROR(Guarded("AllGather", [&]() -> absl::Status {
    output = at::empty(shape, input.options().memory_format(at::MemoryFormat::Contiguous));
    return absl::OkStatus();
  }));
  RETURN_IF_ERROR(AllGatherInto(output, input));
  return output;
}

absl::Status Communicator::AllGatherInto(at::Tensor& output, const at::Tensor& input) {
  RETURN_IF_ERROR(CheckTensor(input, "AllGather"));
  RETURN_IF_ERROR(CheckTensor(output, "AllGather"));
  RETURN_IF_ERROR(CheckWritable(output, "AllGather"));
  if (input.dim() == 0) {
    return absl::InvalidArgumentError("AllGather: input needs at least one dimension");
  }
  if (input.scalar_type() != output.scalar_type()) {
    return absl::InvalidArgumentError(absl::StrCat("AllGather: output dtype ",
                                                   c10::toString(output.scalar_type()),
                                                   " != input dtype ",
                                                   c10::toString(input.scalar_type())));
  }
  std::vector<int64_t> expected = input.sizes().vec();
  expected[0] *= size_;
  if (output.sizes() != at::IntArrayRef(expected)) {
    return absl::InvalidArgumentError(absl::StrCat("AllGather: output ", Shape(output),
                                                   " != group size ", size_, " × input ",
                                                   Shape(input), " along dim 0"));
  }
  if (input.numel() == 0) return absl::OkStatus();
  return Guarded("AllGather", [&]() -> absl::Status {
    at::Tensor in = StageInput(input, output);
    StagedOutput out(output);
    RETURN_IF_ERROR(DoAllGather(out.buffer, in));
    out.CopyBack();
    return absl::OkStatus();
  });
}

absl::StatusOr<std::vector<at::Tensor>> Communicator::AllGatherList(const at::Tensor& input) {
  ASSIGN_OR_RETURN(at::Tensor gathered, AllGather(input));
  // Views into one buffer: chunk r is rank r's input, contiguous.
  std::vector<at::Tensor> parts;
  parts.reserve(size_);
  for (int r = 0; r < size_; ++r) parts.push_back(gathered.narrow(0, r * input.size(0), input.size(0)));
  return parts;
}

absl::StatusOr<at::Tensor> Communicator::AllToAllSingle(const at::Tensor& input,
                                                        const std::vector<int64_t>& output_splits,
                                                        const std::vector<int64_t>& input_splits) {
  RETURN_IF_ERROR(CheckTensor(input, "AllToAllSingle"));
  if (input.dim() == 0) {
    return absl::InvalidArgumentError("AllToAllSingle: input needs at least one dimension");
  }
  std::vector<int64_t> out_splits = output_splits;
  if (out_splits.empty()) {
    if (input_splits.empty()) {
      out_splits = EqualSplits(input.size(0), size_);
    } else {
      // The receivers learn their row counts from the senders: an all-to-all of the counts.
      RETURN_IF_ERROR(CheckSplits(input_splits, size_, input.size(0), "input_splits"));
      at::Tensor counts;
      RETURN_IF_ERROR(Guarded("AllToAllSingle", [&]() -> absl::Status {
        at::Tensor sent = at::tensor(input_splits, at::kLong).to(device());
        counts = at::empty_like(sent);
        RETURN_IF_ERROR(DoAllToAll(counts, sent, std::vector<int64_t>(size_, 1),
                                   std::vector<int64_t>(size_, 1)));
        counts = counts.cpu();
        return absl::OkStatus();
      }));
      out_splits.assign(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + size_);
    }
  }
  std::vector<int64_t> shape = input.sizes().vec();
  shape[0] = std::accumulate(out_splits.begin(), out_splits.end(), int64_t{0});
  at::Tensor output;
  RETURN_IF_ERROR(Guarded("AllToAllSingle", [&]() -> absl::Status {
    output = at::empty(shape, input.options().memory_format(at::MemoryFormat::Contiguous));
    return absl::OkStatus();
  }));
  RETURN_IF_ERROR(AllToAllSingleInto(output, input, out_splits, input_splits));
  return output;
}

absl::Status Communicator::AllToAllSingleInto(at::Tensor& output, const at::Tensor& input,
                                              const std::vector<int64_t>& output_splits,
                                              const std::vector<int64_t>& input_splits) {
  RETURN_IF_ERROR(CheckTensor(input, "AllToAllSingle"));
  RETURN_IF_ERROR(CheckTensor(output, "AllToAllSingle"));
  RETURN_IF_ERROR(CheckWritable(output, "AllToAllSingle"));
  if (input.dim() == 0 || output.dim() != input.dim()) {
    return absl::InvalidArgumentError(absl::StrCat("AllToAllSingle: input ", Shape(input),
                                                   " and output ", Shape(output),
                                                   " need the same rank ≥ 1"));
  }
  if (input.scalar_type() != output.scalar_type()) {
    return absl::InvalidArgumentError(absl::StrCat("AllToAllSingle: output dtype ",
                                                   c10::toString(output.scalar_type()),
                                                   " != input dtype ",
                                                   c10::toString(input.scalar_type())));
  }
  if (input.sizes().slice(1) != output.sizes().slice(1)) {
    return absl::InvalidArgumentError(absl::StrCat("AllToAllSingle: input ", Shape(input),
                                                   " and output ", Shape(output),
                                                   " differ beyond dim 0"));
  }
  auto equal = [&](int64_t rows, const char* which) -> absl::StatusOr<std::vector<int64_t>> {
    if (rows % size_ != 0) {
      return absl::InvalidArgumentError(absl::StrCat("AllToAllSingle: ", which, " dim 0 = ", rows,
                                                     " not divisible by group size ", size_,
                                                     " (pass split sizes for uneven chunks)"));
    }
    return EqualSplits(rows, size_);
  };
  std::vector<int64_t> in_splits = input_splits, out_splits = output_splits;
  if (in_splits.empty()) {
    ASSIGN_OR_RETURN(in_splits, equal(input.size(0), "input"));
  }
  if (out_splits.empty()) {
    ASSIGN_OR_RETURN(out_splits, equal(output.size(0), "output"));
  }
  RETURN_IF_ERROR(CheckSplits(in_splits, size_, input.size(0), "input_splits"));
  RETURN_IF_ERROR(CheckSplits(out_splits, size_, output.size(0), "output_splits"));
  if (in_splits[rank_] != out_splits[rank_]) {
    return absl::InvalidArgumentError(
        absl::StrCat("AllToAllSingle: rank ", rank_, " sends itself ", in_splits[rank_],
                     " rows but expects ", out_splits[rank_]));
  }
  return Guarded("AllToAllSingle", [&]() -> absl::Status {
    at::Tensor in = StageInput(input, output);
    StagedOutput out(output);
    RETURN_IF_ERROR(DoAllToAll(out.buffer, in, out_splits, in_splits));
    out.CopyBack();
    return absl::OkStatus();
  });
}

absl::Status Communicator::Broadcast(at::Tensor& tensor, int root) {
  RETURN_IF_ERROR(CheckTensor(tensor, "Broadcast"));
  RETURN_IF_ERROR(CheckPeer(root, "Broadcast root"));
  if (rank_ != root) RETURN_IF_ERROR(CheckWritable(tensor, "Broadcast"));
  if (tensor.numel() == 0) return absl::OkStatus();
  return Guarded("Broadcast", [&]() -> absl::Status {
    // The root's tensor is only read: stage it without a copy back.
    if (rank_ == root) {
      at::Tensor in = tensor.contiguous();
      return DoBroadcast(in, root);
    }
    StagedOutput out(tensor);
    RETURN_IF_ERROR(DoBroadcast(out.buffer, root));
    out.CopyBack();
    return absl::OkStatus();
  });
}

absl::Status Communicator::Send(const at::Tensor& tensor, int peer, int tag) {
  RETURN_IF_ERROR(CheckTensor(tensor, "Send"));
  RETURN_IF_ERROR(CheckPeer(peer, "Send"));
  if (peer == rank_) return absl::InvalidArgumentError("Send: a rank cannot send to itself");
  if (tensor.numel() == 0) return absl::OkStatus();
  return Guarded("Send", [&]() -> absl::Status { return DoSend(tensor.contiguous(), peer, tag); });
}

absl::Status Communicator::Recv(at::Tensor& tensor, int peer, int tag) {
  RETURN_IF_ERROR(CheckTensor(tensor, "Recv"));
  RETURN_IF_ERROR(CheckPeer(peer, "Recv"));
  RETURN_IF_ERROR(CheckWritable(tensor, "Recv"));
  if (peer == rank_) return absl::InvalidArgumentError("Recv: a rank cannot receive from itself");
  if (tensor.numel() == 0) return absl::OkStatus();
  return Guarded("Recv", [&]() -> absl::Status {
    StagedOutput out(tensor);
    RETURN_IF_ERROR(DoRecv(out.buffer, peer, tag));
    out.CopyBack();
    return absl::OkStatus();
  });
}

absl::Status Communicator::SendRecv(const at::Tensor& send, int dst, at::Tensor& recv, int src,
                                    int tag) {
  RETURN_IF_ERROR(CheckTensor(send, "SendRecv"));
  RETURN_IF_ERROR(CheckTensor(recv, "SendRecv"));
  RETURN_IF_ERROR(CheckPeer(dst, "SendRecv destination"));
  RETURN_IF_ERROR(CheckPeer(src, "SendRecv source"));
  RETURN_IF_ERROR(CheckWritable(recv, "SendRecv"));
  if (at::get_overlap_status(send, recv) != at::MemOverlapStatus::No) {
    return absl::InvalidArgumentError("SendRecv: recv overlaps send");
  }
  if ((dst == rank_) != (src == rank_)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SendRecv: rank ", rank_, " sends to ", dst, " and receives from ", src,
        "; a rank exchanges with itself only as both destination and source"));
  }
  return Guarded("SendRecv", [&]() -> absl::Status {
    if (dst == rank_) {
      // A ring of one: the block comes straight back.
      if (send.sizes() != recv.sizes() || send.scalar_type() != recv.scalar_type()) {
        return absl::InvalidArgumentError("SendRecv to itself: send and recv differ");
      }
      recv.copy_(send);
      return absl::OkStatus();
    }
    at::Tensor in = send.contiguous();
    StagedOutput out(recv);
    RETURN_IF_ERROR(DoSendRecv(in, dst, out.buffer, src, tag));
    out.CopyBack();
    return absl::OkStatus();
  });
}

absl::Status Communicator::Barrier() {
  return Guarded("Barrier", [&]() { return DoBarrier(); });
}

absl::Status Communicator::BroadcastBytes(std::string* bytes, int root) {
  if (bytes == nullptr) return absl::InvalidArgumentError("BroadcastBytes: null string");
  RETURN_IF_ERROR(CheckPeer(root, "BroadcastBytes root"));
  return Guarded("BroadcastBytes", [&]() -> absl::Status {
    const at::TensorOptions host = at::TensorOptions().dtype(at::kLong);
    at::Tensor length = at::full({1}, static_cast<int64_t>(bytes->size()), host).to(device());
    RETURN_IF_ERROR(DoBroadcast(length, root));
    RETURN_IF_ERROR(DoSynchronize("BroadcastBytes"));
    const int64_t n = length.cpu().item<int64_t>();
    if (n == 0) {
      bytes->clear();
      return absl::OkStatus();
    }
    at::Tensor payload;
    if (rank_ == root) {
      payload = at::from_blob(bytes->data(), {n}, at::TensorOptions().dtype(at::kByte))
                    .to(device(), /*non_blocking=*/false, /*copy=*/true);
    } else {
      payload = at::empty({n}, at::TensorOptions().dtype(at::kByte).device(device()));
    }
    RETURN_IF_ERROR(DoBroadcast(payload, root));
    if (rank_ != root) {
      RETURN_IF_ERROR(DoSynchronize("BroadcastBytes"));
      at::Tensor host_payload = payload.cpu();
      bytes->assign(reinterpret_cast<const char*>(host_payload.data_ptr<uint8_t>()), n);
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<std::unique_ptr<Communicator>> Communicator::Split(const std::vector<int>& ranks) {
  if (ranks.empty()) return absl::InvalidArgumentError("Split: empty rank list");
  std::vector<int> sorted = ranks;
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < sorted.size(); ++i) {
    RETURN_IF_ERROR(CheckPeer(sorted[i], "Split"));
    if (i > 0 && sorted[i] == sorted[i - 1]) {
      return absl::InvalidArgumentError(
          absl::StrCat("Split: rank ", sorted[i], " listed twice in [", absl::StrJoin(ranks, ", "), "]"));
    }
  }
  const auto it = std::find(ranks.begin(), ranks.end(), rank_);
  const int new_rank = it == ranks.end() ? -1 : static_cast<int>(it - ranks.begin());
  if (ranks.size() == 1) {
    if (new_rank < 0) return std::unique_ptr<Communicator>();
    auto single = CreateSingleRankCommunicator(device());
    single->set_wait_limit(wait_limit_);
    return single;
  }
  absl::StatusOr<std::unique_ptr<Communicator>> result;
  RETURN_IF_ERROR(Guarded("Split", [&]() -> absl::Status {
    result = DoSplit(ranks, new_rank);
    return absl::OkStatus();
  }));
  if (result.ok() && *result != nullptr) (*result)->set_wait_limit(wait_limit_);
  return result;
}

void WaitLimit::Abort(absl::Status why) {
  {
    absl::MutexLock lock(&mu_);
    if (!aborted_.ok()) return;
    aborted_ = why.ok() ? absl::AbortedError("collective wait aborted") : std::move(why);
  }
  absl::MutexLock lock(&listeners_mu_);
  for (const std::function<void()>& wake : listeners_) wake();
}

std::unique_ptr<WaitLimit::Registration> WaitLimit::OnAbort(std::function<void()> wake) {
  absl::MutexLock lock(&listeners_mu_);
  // Abort() sets aborted_ before it takes listeners_mu_: either this check sees it (and this
  // thread wakes) or the listener is registered before Abort() walks the list.
  if (aborted()) {
    wake();
    return std::unique_ptr<Registration>(new Registration(nullptr, {}));
  }
  listeners_.push_front(std::move(wake));
  return std::unique_ptr<Registration>(new Registration(this, listeners_.begin()));
}

WaitLimit::Registration::~Registration() {
  if (limit_ == nullptr) return;
  absl::MutexLock lock(&limit_->listeners_mu_);
  limit_->listeners_.erase(it_);
}

void WaitLimit::SetDeadline(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  deadline_ = deadline;
}

absl::Time WaitLimit::deadline() const {
  absl::MutexLock lock(&mu_);
  return deadline_;
}

absl::Status WaitLimit::Check() const {
  absl::MutexLock lock(&mu_);
  if (!aborted_.ok()) return aborted_;
  if (absl::Now() >= deadline_) {
    return absl::DeadlineExceededError("collective wait: the request's deadline passed");
  }
  return absl::OkStatus();
}

bool WaitLimit::aborted() const {
  absl::MutexLock lock(&mu_);
  return !aborted_.ok();
}

}  // namespace diffmesh::models::parallel
