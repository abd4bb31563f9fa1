// The pending view: reads of a store as it will be once batches not yet written are.
#include <catch2/catch.hpp>

#include "store/pending_view.h"

using namespace fm;
using namespace fm::store;

namespace {
std::string Read(const Store& s, const std::string& key) {
  auto v = s.Get(key);
  REQUIRE(v.ok());
  return v->has_value() ? **v : "<none>";
}
}  // namespace

TEST_CASE("the pending view answers from the newest batch that touches a key, then from the store", "[unit]") {
  auto base = NewMemStore();
  WriteBatch initial;
  initial.Put("a", "base-a");
  initial.Put("b", "base-b");
  initial.Put("c", "base-c");
  initial.Put("r2", "base-r2");
  REQUIRE(base->Write(initial, false).ok());

  WriteBatch in_flight, gathered;
  in_flight.Put("a", "flight-a");
  in_flight.Delete("b");
  in_flight.DeleteRange("r1", "r9");
  in_flight.Put("r5", "flight-r5");  // after the range in the same batch: it stands
  gathered.Put("b", "gathered-b");

  PendingView view(base.get());
  CHECK(Read(view, "a") == "base-a");  // nothing pending yet
  view.SetPending({&in_flight, &gathered});
  CHECK(Read(view, "a") == "flight-a");
  CHECK(Read(view, "b") == "gathered-b");  // the later batch wins
  CHECK(Read(view, "c") == "base-c");      // untouched: the store
  CHECK(Read(view, "r2") == "<none>");     // deleted by the range
  CHECK(Read(view, "r5") == "flight-r5");
  CHECK(Read(view, "zz") == "<none>");

  // The gathered batch grows turn by turn; the view sees what was appended.
  gathered.Delete("a");
  gathered.Put("r2", "gathered-r2");
  CHECK(Read(view, "a") == "<none>");
  CHECK(Read(view, "r2") == "gathered-r2");

  // Written: the view set again without it reads the store.
  REQUIRE(base->Write(in_flight, false).ok());
  view.SetPending({&gathered});
  CHECK(Read(view, "r5") == "flight-r5");
  CHECK(Read(view, "c") == "base-c");
  CHECK_FALSE(view.Write(gathered, false).ok());  // a view does not write
}

TEST_CASE("a write batch's bytes give the same batch back, and bytes from a peer are checked to the last one",
          "[unit]") {
  WriteBatch batch;
  batch.Put("a/1", "one");
  batch.Put(std::string("b/\0x", 4), std::string("\0\xff", 2));
  batch.Delete("a/2");
  batch.DeleteRange("c/", "d/");
  batch.Put("e/", "");
  const std::string bytes = batch.Serialize();
  auto parsed = WriteBatch::Parse(bytes);
  REQUIRE(parsed.ok());
  REQUIRE(parsed->size() == batch.size());
  for (size_t i = 0; i < batch.size(); ++i) {
    CHECK(parsed->op(i).kind == batch.op(i).kind);
    CHECK(parsed->op(i).key == batch.op(i).key);
    CHECK(parsed->op(i).value == batch.op(i).value);
  }
  CHECK(parsed->Serialize() == bytes);
  CHECK(WriteBatch::Parse(WriteBatch().Serialize())->empty());

  // Every cut is refused, as are trailing bytes, an unknown kind and a count that lies.
  for (size_t n = 0; n < bytes.size(); ++n) CHECK_FALSE(WriteBatch::Parse(bytes.substr(0, n)).ok());
  auto trailing = WriteBatch::Parse(bytes + "x");
  REQUIRE_FALSE(trailing.ok());
  CHECK(trailing.status().message() == "write batch: 1 bytes after its ops");
  std::string kind = bytes;
  kind[4] = 7;
  CHECK(WriteBatch::Parse(kind).status().message() == "write batch: op 0 has unknown kind 7");
  std::string lie = bytes;
  lie[3] = '\x7f';  // 2^31 ops
  CHECK(WriteBatch::Parse(lie).status().message().find("ops in") != std::string::npos);
  std::string huge = bytes;
  huge[8] = '\xff';  // the first key's size: beyond the bytes there
  CHECK(WriteBatch::Parse(huge).status().message() == "write batch: op 0 is cut");
}

TEST_CASE("a write batch from a peer may not delete a reversed range", "[unit]") {
  WriteBatch batch;
  batch.DeleteRange("d/", "c/");
  CHECK(WriteBatch::Parse(batch.Serialize()).status().message() ==
        "write batch: op 0 deletes a range that ends where it begins");
  // And a store given one deletes nothing.
  auto store = NewMemStore();
  WriteBatch put;
  put.Put("c/1", "x");
  REQUIRE(store->Write(put, false).ok());
  REQUIRE(store->Write(batch, false).ok());
  CHECK(Read(*store, "c/1") == "x");
}
