// The pure parts of what operators get: the log fields journald and json carry, and the
// metrics sheet's histogram and families.
#include "runtime/ops.h"

#include <catch2/catch.hpp>

using namespace fm::ops;

TEST_CASE("log fields name the task and the worker a message is about, and nothing it is not about", "[unit]") {
  LogFields f = FieldsOf("task t42 on worker gpu-07.rack1: started");
  CHECK(f.task == "42");
  CHECK(f.worker == "gpu-07.rack1");
  CHECK(FieldsOf("task 7 ended").task == "7");
  CHECK(FieldsOf("worker \"alpha\" is refused").worker == "alpha");
  CHECK(FieldsOf("after a pause every worker gets a fresh window").worker.empty());
  LogFields none = FieldsOf("subtask 9 of coworker x; the task is done");
  CHECK(none.task.empty());
  CHECK(none.worker.empty());
  CHECK(FieldsOf("lost worker w1.").worker == "w1");
}

TEST_CASE("a latency histogram is cumulative, with +Inf holding every sample, families are declared once", "[unit]") {
  LatencyHistogram h({0.01, 0.1, 1});
  for (double v : {0.005, 0.05, 0.05, 0.5, 5.0}) h.Observe(v);
  Sheet sheet;
  h.Write(sheet, "commit_seconds", "help");
  sheet.Counter("x_total", "first", 1, {{"k", "a"}});
  sheet.Counter("x_total", "", 2, {{"k", "b"}});
  auto families = sheet.Take();
  REQUIRE(families.size() == 2);
  CHECK(families[0].name == "fm_commit_seconds");
  const auto& hist = families[0].metric.at(0).histogram;
  REQUIRE(hist.bucket.size() == 4);
  CHECK(hist.bucket[0].cumulative_count == 1);
  CHECK(hist.bucket[1].cumulative_count == 3);
  CHECK(hist.bucket[2].cumulative_count == 4);
  CHECK(hist.bucket[3].cumulative_count == 5);
  CHECK(hist.sample_count == 5);
  CHECK(hist.sample_sum == Approx(5.605));
  CHECK(families[1].help == "first");
  CHECK(families[1].metric.size() == 2);
}
