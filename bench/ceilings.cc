// The ceilings fm's figures are compared with, measured in the same run:
//  - raw ZeroMQ PUSH/PULL messages/s over loopback TCP (100-byte messages),
//  - raw ZeroMQ DEALER/ROUTER round trip over loopback TCP (p50/p99),
//  - raw RocksDB synced WriteBatch puts/s at batch sizes 1, 100 and 1000.
#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <thread>
#include <zmq.hpp>

#include "bench_util.h"

using namespace fm::bench;

namespace {

void PushPull(int messages) {
  zmq::context_t ctx(1);
  zmq::socket_t pull(ctx, zmq::socket_type::pull);
  pull.set(zmq::sockopt::rcvhwm, 0);
  pull.bind("tcp://127.0.0.1:*");
  std::string endpoint = pull.get(zmq::sockopt::last_endpoint);
  std::thread sender([&] {
    zmq::socket_t push(ctx, zmq::socket_type::push);
    push.set(zmq::sockopt::sndhwm, 0);
    push.connect(endpoint);
    std::string payload(100, 'x');
    for (int i = 0; i < messages; ++i) push.send(zmq::buffer(payload), zmq::send_flags::none);
  });
  zmq::message_t msg;
  (void)pull.recv(msg);  // the clock starts at the first message: connection set-up excluded
  double start = NowSeconds();
  for (int i = 1; i < messages; ++i) (void)pull.recv(msg);
  double elapsed = NowSeconds() - start;
  sender.join();
  Report("zmq_push_pull_msgs_per_s", (messages - 1) / elapsed, "msg/s");
}

void RoundTrip(int trips) {
  zmq::context_t ctx(1);
  zmq::socket_t router(ctx, zmq::socket_type::router);
  router.bind("tcp://127.0.0.1:*");
  std::string endpoint = router.get(zmq::sockopt::last_endpoint);
  std::thread echo([&] {
    for (int i = 0; i < trips + 1; ++i) {
      zmq::message_t id, body;
      (void)router.recv(id);
      (void)router.recv(body);
      router.send(id, zmq::send_flags::sndmore);
      router.send(body, zmq::send_flags::none);
    }
  });
  zmq::socket_t dealer(ctx, zmq::socket_type::dealer);
  dealer.connect(endpoint);
  std::string payload(100, 'x');
  zmq::message_t reply;
  dealer.send(zmq::buffer(payload), zmq::send_flags::none);
  (void)dealer.recv(reply);
  std::vector<double> us;
  for (int i = 0; i < trips; ++i) {
    double t = NowSeconds();
    dealer.send(zmq::buffer(payload), zmq::send_flags::none);
    (void)dealer.recv(reply);
    us.push_back((NowSeconds() - t) * 1e6);
  }
  echo.join();
  Report("zmq_dealer_router_rtt_p50_us", Percentile(us, 50), "us");
  Report("zmq_dealer_router_rtt_p99_us", Percentile(us, 99), "us");
}

void RocksSynced(int batch_size, int batches) {
  std::string dir = std::filesystem::temp_directory_path() / ("fm-bench-rocks-" + std::to_string(getpid()));
  std::filesystem::remove_all(dir);
  rocksdb::Options options;
  options.create_if_missing = true;
  rocksdb::DB* raw = nullptr;
  if (!rocksdb::DB::Open(options, dir, &raw).ok()) return;
  std::unique_ptr<rocksdb::DB> db(raw);
  rocksdb::WriteOptions wo;
  wo.sync = true;
  std::string value(200, 'v');
  uint64_t key = 0;
  double start = NowSeconds();
  for (int b = 0; b < batches; ++b) {
    rocksdb::WriteBatch batch;
    for (int i = 0; i < batch_size; ++i) {
      std::string k = "k" + std::to_string(key++);
      batch.Put(k, value);
    }
    db->Write(wo, &batch);
  }
  double elapsed = NowSeconds() - start;
  db.reset();
  std::filesystem::remove_all(dir);
  Report("rocksdb_synced_puts_per_s_batch_" + std::to_string(batch_size), key / elapsed, "puts/s");
  Report("rocksdb_synced_batches_per_s_batch_" + std::to_string(batch_size), batches / elapsed, "batches/s");
}

}  // namespace

int main(int argc, char** argv) {
  bool tiny = Tiny(argc, argv);
  PushPull(tiny ? 1000 : 2'000'000);
  RoundTrip(tiny ? 100 : 20'000);
  RocksSynced(1, tiny ? 20 : 2000);
  RocksSynced(100, tiny ? 5 : 1000);
  RocksSynced(1000, tiny ? 2 : 300);
  return 0;
}
