#include "models/parallel/gloo_comm.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/version.h>

#include <algorithm>
#include <exception>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "models/parallel/rendezvous.h"

// Version notes (kept here, the only place that touches ProcessGroupGloo):
//  * 1.13: ProcessGroupGloo derives from c10d::ProcessGroup; its Options from
//    ProcessGroup::Options (default timeout kProcessGroupDefaultTimeout).
//  * 2.x: it derives from c10d::Backend, Options from Backend::Options (kBackendDefaultTimeout),
//    and the device factories take an extra `lazyInit` flag with a default.
// Both are driven the same way from here: construct with (store, rank, size, options) and call
// the collectives on the object itself, so only the timeout default differs and we always pass
// ours explicitly. _allgather_base (one flat output) throws "no support" on 1.13's Gloo, so the
// list form of allgather is used.
#ifndef USE_C10D_GLOO
#error "gloo_comm.cc needs a LibTorch built with Gloo (USE_C10D_GLOO)"
#endif

namespace diffmesh::models::parallel {
namespace {

using GlooDevice = std::shared_ptr<::gloo::transport::Device>;

bool IsLoopback(const std::string& addr) {
  return addr == "localhost" || addr == "::1" || absl::StartsWith(addr, "127.");
}

absl::Status FromException(const char* op, const std::exception& e) {
  const std::string message = absl::StrCat("gloo ", op, ": ", e.what());
  if (absl::StrContains(e.what(), "imed out") || absl::StrContains(e.what(), "imeout")) {
    return absl::DeadlineExceededError(message);
  }
  return absl::InternalError(message);
}

absl::Status Wait(const c10::intrusive_ptr<c10d::Work>& work, const char* op) {
  try {
    work->wait();
  } catch (const std::exception& e) {
    return FromException(op, e);
  }
  return absl::OkStatus();
}

// Waits for a collective (an AsyncWork: its wait(timeout) is c10d::Work's, which gives up
// without touching the operation) in slices of kWaitPollInterval, checking `limit` between
// them. An operation given up on keeps running in the process group's thread until Gloo's own
// timeout or a peer's disconnect ends it (it may still write its output then): the caller keeps
// its tensors alive (Abandon) and drops the communicator.
absl::Status WaitLimited(const c10::intrusive_ptr<c10d::Work>& work, const char* op,
                         const WaitLimit* limit, bool* given_up) {
  *given_up = false;
  if (limit == nullptr) return Wait(work, op);
  const auto slice = absl::ToChronoMilliseconds(kWaitPollInterval);
  try {
    while (true) {
      try {
        work->wait(slice);
        return absl::OkStatus();
      } catch (const std::exception&) {
        // wait(slice) throws "Operation timed out" when the slice ends first, and the operation
        // may complete between that throw and this check (often, on a loaded machine): a
        // completed operation is waited for once more, which returns at once with its own
        // outcome (OK, or its error thrown). Rethrowing the slice's timeout here reported a
        // finished collective as timed out, and that rank then left the group.
        if (work->isCompleted()) {
          work->wait();
          return absl::OkStatus();
        }
      }
      if (absl::Status s = limit->Check(); !s.ok()) {
        *given_up = true;
        return absl::Status(s.code(), absl::StrCat("gloo ", op, ": ", s.message()));
      }
    }
  } catch (const std::exception& e) {
    return FromException(op, e);
  }
}

// Bytes in one row (all of dims 1..) of a tensor, from its shape alone: the same on every rank
// of a collective, even one that holds zero rows.
int64_t RowBytes(const at::Tensor& t) {
  int64_t n = t.element_size();
  for (int64_t d = 1; d < t.dim(); ++d) n *= t.size(d);
  return n;
}

// A contiguous [rows, ...] tensor as a [rows, row_bytes] uint8 tensor over the same memory:
// data movement then works for every dtype, whatever Gloo's type switch knows.
at::Tensor RowBytesView(const at::Tensor& t) {
  return at::from_blob(t.data_ptr(), {t.size(0), RowBytes(t)},
                       at::TensorOptions().dtype(at::kByte));
}
at::Tensor FlatBytes(const at::Tensor& t) {
  return at::from_blob(t.data_ptr(), {t.numel() * t.element_size()},
                       at::TensorOptions().dtype(at::kByte));
}

// Gloo's reductions cover these; other dtypes are reduced in a wider one.
bool GlooReduces(at::ScalarType type) {
  switch (type) {
    case at::kFloat:
    case at::kDouble:
    case at::kHalf:
    case at::kChar:
    case at::kByte:
    case at::kInt:
    case at::kLong:
      return true;
    default:
      return false;
  }
}

c10d::ReduceOp ToGloo(ReduceOp op) {
  switch (op) {
    case ReduceOp::kMax:
      return c10d::ReduceOp::MAX;
    case ReduceOp::kMin:
      return c10d::ReduceOp::MIN;
    case ReduceOp::kSum:
    case ReduceOp::kAvg:  // Gloo has no average: sum, then divide.
      break;
  }
  return c10d::ReduceOp::SUM;
}

class GlooCommunicator final : public Communicator {
 public:
  // Connects a process group of `size` over `store` (which must be private to this group).
  static absl::StatusOr<std::unique_ptr<GlooCommunicator>> Connect(
      c10::intrusive_ptr<c10d::Store> store, int rank, int size, const GlooDevice& device,
      int threads, std::chrono::milliseconds timeout) {
    auto options = c10d::ProcessGroupGloo::Options::create(timeout);
    options->devices.push_back(device);
    options->threads = threads;
    c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
    try {
      pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, options);
    } catch (const std::exception& e) {
      return absl::UnavailableError(absl::StrCat("gloo process group (rank ", rank, " of ",
                                                 size, "): ", e.what()));
    }
    return std::unique_ptr<GlooCommunicator>(new GlooCommunicator(
        rank, size, std::move(store), device, threads, timeout, std::move(pg)));
  }

  const char* backend() const override { return "gloo"; }
  at::Device device() const override { return at::kCPU; }

 protected:
  absl::Status DoAllReduce(at::Tensor& tensor, ReduceOp op) override {
    if (!GlooReduces(tensor.scalar_type())) {
      at::ScalarType wide;
      if (at::isFloatingType(tensor.scalar_type())) {
        wide = at::kFloat;
      } else if (at::isIntegralType(tensor.scalar_type(), /*includeBool=*/true)) {
        wide = at::kLong;
      } else {
        return absl::InvalidArgumentError(absl::StrCat(
            "gloo AllReduce: no reduction for dtype ", c10::toString(tensor.scalar_type())));
      }
      at::Tensor staged = tensor.to(wide);
      RETURN_IF_ERROR(DoAllReduce(staged, op));
      tensor.copy_(staged);
      return absl::OkStatus();
    }
    std::vector<at::Tensor> tensors{tensor};
    c10d::AllreduceOptions opts;
    opts.reduceOp = ToGloo(op);
    opts.timeout = timeout_;
    c10::intrusive_ptr<c10d::Work> work;
    try {
      work = pg_->allreduce(tensors, opts);
    } catch (const std::exception& e) {
      return FromException("AllReduce", e);
    }
    RETURN_IF_ERROR(Finish(work, "AllReduce", {tensor}));
    if (op == ReduceOp::kAvg) tensor.div_(size());
    return absl::OkStatus();
  }

  absl::Status DoAllGather(at::Tensor& output, const at::Tensor& input) override {
    const int64_t rows = input.size(0);
    std::vector<std::vector<at::Tensor>> outputs(1);
    for (int r = 0; r < size(); ++r) outputs[0].push_back(FlatBytes(output.narrow(0, r * rows, rows)));
    std::vector<at::Tensor> inputs{FlatBytes(input)};
    c10d::AllgatherOptions opts;
    opts.timeout = timeout_;
    return Run("AllGather", {output, input}, [&] { return pg_->allgather(outputs, inputs, opts); });
  }

  absl::Status DoAllToAll(at::Tensor& output, const at::Tensor& input,
                          const std::vector<int64_t>& output_splits,
                          const std::vector<int64_t>& input_splits) override {
    // Rows hold no bytes on any rank (trailing dims match across ranks): nothing to move.
    if (RowBytes(input) == 0) return absl::OkStatus();
    // Split sizes count rows of dim 0; the byte views keep dim 0, so chunks stay whole rows.
    at::Tensor out = RowBytesView(output);
    at::Tensor in = RowBytesView(input);
    std::vector<int64_t> out_counts = output_splits, in_counts = input_splits;
    const auto same = [&](int64_t s) { return s == input_splits[0]; };
    if (std::all_of(in_counts.begin(), in_counts.end(), same) &&
        std::all_of(out_counts.begin(), out_counts.end(), same)) {
      // Equal chunks: empty counts select Gloo's plain all-to-all instead of alltoallv.
      in_counts.clear();
      out_counts.clear();
    }
    c10d::AllToAllOptions opts;
    opts.timeout = timeout_;
    return Run("AllToAllSingle", {output, input},
               [&] { return pg_->alltoall_base(out, in, out_counts, in_counts, opts); });
  }

  absl::Status DoBroadcast(at::Tensor& tensor, int root) override {
    std::vector<at::Tensor> tensors{FlatBytes(tensor)};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    opts.rootTensor = 0;
    opts.timeout = timeout_;
    return Run("Broadcast", {tensor}, [&] { return pg_->broadcast(tensors, opts); });
  }

  absl::Status DoSend(const at::Tensor& tensor, int peer, int tag) override {
    std::vector<at::Tensor> tensors{FlatBytes(tensor)};
    return RunP2P("Send", {tensor}, [&] { return pg_->send(tensors, peer, tag); });
  }

  absl::Status DoRecv(at::Tensor& tensor, int peer, int tag) override {
    std::vector<at::Tensor> tensors{FlatBytes(tensor)};
    return RunP2P("Recv", {tensor}, [&] { return pg_->recv(tensors, peer, tag); });
  }

  absl::Status DoSendRecv(const at::Tensor& send, int dst, at::Tensor& recv, int src,
                          int tag) override {
    // Gloo's send and recv are asynchronous: post both, then wait for both.
    std::vector<at::Tensor> sent{FlatBytes(send)};
    std::vector<at::Tensor> received{FlatBytes(recv)};
    c10::intrusive_ptr<c10d::Work> send_work, recv_work;
    try {
      send_work = pg_->send(sent, dst, tag);
      recv_work = pg_->recv(received, src, tag);
    } catch (const std::exception& e) {
      if (send_work) Wait(send_work, "SendRecv").IgnoreError();
      return FromException("SendRecv", e);
    }
    absl::Status recv_status = WaitP2P(recv_work, "SendRecv", {send, recv});
    absl::Status send_status = WaitP2P(send_work, "SendRecv", {send, recv});
    RETURN_IF_ERROR(recv_status);
    return send_status;
  }

  absl::Status DoBarrier() override {
    c10d::BarrierOptions opts;
    opts.timeout = timeout_;
    return Run("Barrier", {}, [&] { return pg_->barrier(opts); });
  }

  absl::StatusOr<std::unique_ptr<Communicator>> DoSplit(const std::vector<int>& ranks,
                                                        int new_rank) override {
    // Every rank counts every split, so the n-th split has the same store prefix everywhere.
    const int64_t id = ++splits_;
    if (new_rank < 0) return std::unique_ptr<Communicator>();
    auto store = c10::make_intrusive<c10d::PrefixStore>(absl::StrCat("split", id), store_);
    ASSIGN_OR_RETURN(std::unique_ptr<GlooCommunicator> comm,
                     Connect(std::move(store), new_rank, static_cast<int>(ranks.size()),
                             gloo_device_, threads_, timeout_));
    return std::unique_ptr<Communicator>(std::move(comm));
  }

 private:
  GlooCommunicator(int rank, int size, c10::intrusive_ptr<c10d::Store> store, GlooDevice device,
                   int threads, std::chrono::milliseconds timeout,
                   c10::intrusive_ptr<c10d::ProcessGroupGloo> pg)
      : Communicator(rank, size),
        store_(std::move(store)),
        gloo_device_(std::move(device)),
        threads_(threads),
        timeout_(timeout),
        pg_(std::move(pg)) {}

  // Posts one point-to-point operation and waits for it (WaitP2P).
  template <typename Post>
  absl::Status RunP2P(const char* op, std::vector<at::Tensor> tensors, Post&& post) {
    c10::intrusive_ptr<c10d::Work> work;
    try {
      work = post();
    } catch (const std::exception& e) {
      return FromException(op, e);
    }
    return WaitP2P(work, op, std::move(tensors));
  }

  // 1.13's SendWork / RecvWork wait through Gloo's buffer waits, whose timeout is fatal to the
  // process group: they cannot be polled like the collectives. So the wait lasts until the wait
  // limit's deadline at most, and an Abort() of the limit (the membership's lost or hung peer:
  // ring attention's steps) wakes it through the work's abort(), which ends the buffer wait
  // without touching the process group. An operation given up on keeps `tensors` alive.
  absl::Status WaitP2P(const c10::intrusive_ptr<c10d::Work>& work, const char* op,
                       std::vector<at::Tensor> tensors) {
    WaitLimit* limit = wait_limit().get();
    if (limit == nullptr) return Wait(work, op);
    absl::Status s = limit->Check();
    if (s.ok()) {
      const std::unique_ptr<WaitLimit::Registration> wake = limit->OnAbort([work] { work->abort(); });
      const absl::Time deadline = limit->deadline();
      try {
        const bool finished =
            deadline == absl::InfiniteFuture()
                ? work->wait()
                : work->wait(std::chrono::milliseconds(
                      std::max<int64_t>(1, absl::ToInt64Milliseconds(deadline - absl::Now()))));
        // False: abort() woke it (the limit's status below says why).
        if (finished) return absl::OkStatus();
      } catch (const std::exception& e) {
        // As in WaitLimited: an operation that completed right after its wait timed out has
        // its own outcome.
        if (work->isCompleted() && !limit->aborted()) return Wait(work, op);
        s = limit->Check();
        if (s.ok()) s = FromException(op, e);
      }
      if (s.ok()) s = limit->Check();
      if (s.ok()) s = absl::InternalError("the wait was woken without a reason");
    }
    abandoned_.emplace_back(work, std::move(tensors));
    return absl::Status(s.code(), absl::StrCat("gloo ", op, ": ", s.message()));
  }

  // Posts one collective over (views of) `tensors` and waits for it within the wait limit.
  template <typename Post>
  absl::Status Run(const char* op, std::vector<at::Tensor> tensors, Post&& post) {
    c10::intrusive_ptr<c10d::Work> work;
    try {
      work = post();
    } catch (const std::exception& e) {
      return FromException(op, e);
    }
    return Finish(work, op, std::move(tensors));
  }

  // Waits within the wait limit; an operation given up on keeps `tensors` (whose memory Gloo
  // reads and writes through from_blob views) alive as long as this communicator.
  absl::Status Finish(const c10::intrusive_ptr<c10d::Work>& work, const char* op,
                      std::vector<at::Tensor> tensors) {
    bool given_up = false;
    absl::Status s = WaitLimited(work, op, wait_limit().get(), &given_up);
    if (given_up) abandoned_.emplace_back(work, std::move(tensors));
    return s;
  }

  // Operations given up on, with the tensors they may still touch. Declared before pg_, so
  // destroyed after it: the process group's destructor waits for them to end.
  std::vector<std::pair<c10::intrusive_ptr<c10d::Work>, std::vector<at::Tensor>>> abandoned_;
  c10::intrusive_ptr<c10d::Store> store_;
  GlooDevice gloo_device_;
  int threads_;
  std::chrono::milliseconds timeout_;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg_;
  int64_t splits_ = 0;
};

absl::StatusOr<GlooDevice> MakeDevice(const RendezvousOptions& options, const GlooOptions& gloo) {
  if (gloo.threads < 1) {
    return absl::InvalidArgumentError(absl::StrCat("gloo threads ", gloo.threads, " must be >= 1"));
  }
  try {
    if (!gloo.bind_address.empty()) {
      return c10d::ProcessGroupGloo::createDeviceForHostname(gloo.bind_address);
    } else if (IsLoopback(options.master_addr)) {
      return c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
    }
    return c10d::ProcessGroupGloo::createDefaultDevice();
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("gloo transport device: ", e.what()));
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> CreateGlooCommunicator(
    const RendezvousOptions& options, const GlooOptions& gloo) {
  RETURN_IF_ERROR(CheckRendezvous(options));
  RETURN_IF_ERROR(MakeDevice(options, gloo).status());
  ASSIGN_OR_RETURN(c10::intrusive_ptr<c10d::Store> store, ConnectStore(options));
  return CreateGlooCommunicatorOnStore(std::move(store), "gloo", options, gloo);
}

absl::StatusOr<std::unique_ptr<Communicator>> CreateGlooCommunicatorOnStore(
    c10::intrusive_ptr<c10d::Store> store, const std::string& prefix,
    const RendezvousOptions& options, const GlooOptions& gloo) {
  RETURN_IF_ERROR(CheckRendezvous(options));
  ASSIGN_OR_RETURN(GlooDevice device, MakeDevice(options, gloo));
  ASSIGN_OR_RETURN(std::unique_ptr<GlooCommunicator> comm,
                   GlooCommunicator::Connect(
                       c10::make_intrusive<c10d::PrefixStore>(prefix, std::move(store)),
                       options.rank, options.world_size, device, gloo.threads, options.timeout));
  return std::unique_ptr<Communicator>(std::move(comm));
}

}  // namespace diffmesh::models::parallel
