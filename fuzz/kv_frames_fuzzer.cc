// Fuzzes the rendezvous store's request handling (common/kvstore/kv_server.h, the server rank 0
// of a denoise group runs): the input is the byte stream of one connection, cut into frames by
// the server's own ForEachFrame (a length over kMaxFrameBytes ends the connection) and each
// handed to KvTable::Handle. Every answer must have the shape its operation promises, and the number of
// keys must match what NUMKEYS says.
#include <cstdint>
#include <string>
#include <string_view>

#include "common/kvstore/kv_server.h"
#include "fuzz/fuzz_input.h"

using diffmesh::fuzz::Check;
using diffmesh::kvstore::KvTable;
using diffmesh::kvstore::Op;
using diffmesh::kvstore::Reader;

namespace {

void CheckAnswer(Op op, const std::string& answer, const KvTable& table) {
  Reader r(answer);
  switch (op) {
    case Op::kSet:
      break;
    case Op::kGet:
      if (r.U8() != 0) r.Str();
      break;
    case Op::kAdd:
      r.I64();
      break;
    case Op::kCheck:
    case Op::kDelete:
      Check(r.U8() <= 1, "a CHECK / DELETE answer that is not 0 or 1");
      break;
    case Op::kNumKeys:
      Check(r.I64() == static_cast<int64_t>(table.size()), "NUMKEYS disagrees with the table");
      break;
    case Op::kCompareSet:
      r.Str();
      break;
    default:
      Check(false, "an unknown operation was answered");
  }
  Check(r.ok() && r.done(), "an answer of the wrong shape");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  KvTable table;
  size_t writes = 0;
  diffmesh::kvstore::ForEachFrame(
      std::string_view(reinterpret_cast<const char*>(data), size), [&](std::string_view payload) {
        std::string answer;
        if (!table.Handle(payload, answer)) return false;  // the server drops the connection
        const Op op = static_cast<Op>(static_cast<uint8_t>(payload[0]));
        writes += op == Op::kSet || op == Op::kAdd || op == Op::kCompareSet;
        CheckAnswer(op, answer, table);
        Check(table.size() <= writes, "more keys than writes");
        return true;
      });
  return 0;
}
