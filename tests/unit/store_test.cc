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
