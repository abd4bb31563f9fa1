#include "scheduler/control.h"

#include <limits>

#include "runtime/policy.h"
#include "scheduler/engine.h"
#include "scheduler/records.h"
#include "scheduler/views.h"
#include "schemas/codec.h"
#include "schemas/vocabulary.h"

namespace fm::sched::control {

using codec::Str;

// What reads the engine's state (a friend of it).
struct Internals {
  static Status TaskDetail(const Engine& e, flatbuffers::FlatBufferBuilder& fbb, const std::string& name,
                           const std::optional<std::string>& only_owner,
                           std::vector<flatbuffers::Offset<wire::TaskView>>* out,
                           std::vector<flatbuffers::Offset<wire::Event>>* events, uint64_t now_ms);
  static void Handle(Engine& e, const std::string& from, const wire::ControlRequest& req, uint64_t now_ms);
  static Status GroupOwner(const Engine& e, const std::string& from, const wire::ControlRequest& req,
                           std::string* owner);
};

// The owner whose group a request names: a client's own (it may name no other), an
// operator's choice (req.owner) or its own, and nobody's ("") in a keyless cluster.
Status Internals::GroupOwner(const Engine& e, const std::string& from, const wire::ControlRequest& req,
                             std::string* owner) {
  if (!req.group() || req.group()->size() == 0) return Status::Invalid("no group named");
  if (!e.options_.authenticate) {
    owner->clear();
    return Status::Ok();
  }
  const bus::Principal p = bus::PrincipalOf(from);
  const std::string asked = Str(req.owner());
  if (p.role != bus::Role::kOperator && !asked.empty() && asked != p.name) {
    return Status::Invalid("--owner " + asked + ": a client's groups are its own (\"" + p.name + "\")");
  }
  *owner = asked.empty() ? p.name : asked;
  return Status::Ok();
}

// fm-ctl task ID: the task with its spec, why it waits, and its retained events.
// `only_owner`: a client's view, refused any task of another owner.
Status Internals::TaskDetail(const Engine& e, flatbuffers::FlatBufferBuilder& fbb, const std::string& name,
                             const std::optional<std::string>& only_owner,
                             std::vector<flatbuffers::Offset<wire::TaskView>>* out,
                             std::vector<flatbuffers::Offset<wire::Event>>* events, uint64_t now_ms) {
  uint64_t id = 0;
  if (!ParseTaskName(name, &id)) return Status::Invalid("\"" + name + "\" is not a task id (t42)");
  std::optional<Task> stored;
  const Task* t = e.Peek(id, &stored);
  if (!t) t = e.ended_.FindRecent(id);
  if (!t) {
    auto read = e.ended_.Find(id);
    if (!read.ok()) return read.status();
    stored = std::move(*read);
    if (!stored && id > 0 && id < e.next_task_id_) {
      // Every id below the next was a task: its record is gone, and its output with it.
      return Status::NotFound("no task " + TaskName(id) +
                              " any more: the task retention (--task-retention, --task-retention-age) removed it "
                              "with its output");
    }
    if (!stored) return Status::NotFound("no task " + TaskName(id));
    t = &*stored;
  }
  if (only_owner && t->owner != *only_owner) {
    return Status::Invalid("task " + TaskName(id) + " is not " + *only_owner +
                           "'s: a client sees only the tasks it submitted (an operator sees all)");
  }
  std::string waiting;
  if (t->state == wire::TaskState::Pending && !t->waits_for.empty()) {
    // Blocked: what it runs after that has not succeeded yet, and where each stands.
    waiting = "after: waits for ";
    constexpr size_t kNamed = 5;
    for (size_t i = 0; i < t->waits_for.size() && i < kNamed; ++i) {
      const uint64_t parent = t->waits_for[i];
      std::optional<Task> read;
      const Task* p = e.Peek(parent, &read);
      waiting += (i ? ", " : "") + TaskName(parent);
      if (p == nullptr) continue;
      if (!p->spec.key.empty()) waiting += " \"" + p->spec.key + "\"";
      waiting += std::string(" (") + StateName(p->state) + (p->worker.empty() ? "" : " on " + p->worker) + ")";
    }
    if (t->waits_for.size() > kNamed) waiting += " and " + std::to_string(t->waits_for.size() - kNamed) + " more";
    waiting += " to succeed";
  } else if (t->state == wire::TaskState::Pending && !t->spec.group.empty() &&
             e.groups_.Held(t->owner, t->spec.group, t->id)) {
    waiting = "array bound: group \"" + t->spec.group + "\" has " +
              std::to_string(e.groups_.Cap(t->owner, t->spec.group)) +
              " tasks in line, queued or running (max_running); it joins the line as one ends";
  } else if (t->state == wire::TaskState::Pending && t->not_before_ms > now_ms) {
    waiting = "retry backoff: placed again in " + std::to_string((t->not_before_ms - now_ms + 999) / 1000) + " s";
  } else if (t->state == wire::TaskState::Pending) {
    Explanation why = e.fleet_.Explain(t->spec);
    waiting = why.eligible > 0 ? std::to_string(why.eligible) + " eligible, all full"
                               : e.membership_.WaitingForLost(t->spec, now_ms);
    if (waiting.empty()) waiting = "no eligible worker: " + why.message;
    if (!t->failed_on.empty() && why.eligible > 0) waiting += "; not on " + Listed(t->failed_on) + ", which failed it";
  }
  out->push_back(views::TaskDetail(fbb, *t, waiting));
  // Its events, from its first one on; the look is bounded (a task's events are near
  // each other in the stream).
  if (t->first_seq == 0) return Status::Ok();
  constexpr size_t kLookAt = 20000, kKeep = 500;
  size_t looked = 0;
  const std::string task_name = TaskName(t->id);
  return e.log_.ForEach(t->first_seq, [&](const wire::Event& event) {
    if (Str(event.task()) == task_name) events->push_back(codec::CopyEvent(fbb, event));
    return ++looked < kLookAt && events->size() < kKeep && fbb.GetSize() < kReplyBytes;
  });
}

void Internals::Handle(Engine& e, const std::string& from, const wire::ControlRequest& req, uint64_t now_ms) {
  flatbuffers::FlatBufferBuilder fbb(1024);
  bool ok = true;
  std::string message;
  std::vector<flatbuffers::Offset<wire::WorkerView>> workers;
  flatbuffers::Offset<wire::HaView> ha = 0;
  flatbuffers::Offset<wire::GroupView> group = 0;
  std::vector<flatbuffers::Offset<wire::TaskView>> tasks;
  std::vector<flatbuffers::Offset<wire::Event>> events;
  uint64_t next_page = 0;
  std::string target = Str(req.target());
  switch (req.op()) {
    case wire::ControlOp::Workers:
    case wire::ControlOp::Tasks:
    case wire::ControlOp::Task:
    case wire::ControlOp::Ping:
    case wire::ControlOp::Ha:
    case wire::ControlOp::Group:
      if (!e.Authorized(from, bus::Action::kList)) return;
      break;
    case wire::ControlOp::Drain:
      if (!e.Authorized(from, bus::Action::kDrain)) return;
      break;
    case wire::ControlOp::Undrain:
      if (!e.Authorized(from, bus::Action::kUndrain)) return;
      break;
    case wire::ControlOp::Snapshot:
      if (!e.Authorized(from, bus::Action::kSnapshot)) return;
      break;
    case wire::ControlOp::Cancel:
      break;  // below: a client may cancel its own tasks
  }
  switch (req.op()) {
    case wire::ControlOp::Ping:
      // Answered like every reply, after this turn's commit: an answer also says that
      // the store takes writes (or that the scheduler says it does not).
      message = std::string("fm-scheduler ") + FM_VERSION + ": " + std::to_string(e.fleet_.size()) + " workers, " +
                std::to_string(e.active_count()) + " tasks not ended (" + std::to_string(e.pending_.size()) +
                " waiting" + (e.waiting_loaded() ? "" : ", more being read from the store") +
                (e.blocked_ > 0 ? ", " + std::to_string(e.blocked_) + " blocked (after)" : "") +
                (e.groups_.held() > 0 ? ", " + std::to_string(e.groups_.held()) + " held (array bounds)" : "") +
                "), event seq " + std::to_string(e.log_.next_seq() - 1) +
                (e.options_.leadership.empty() ? "" : "; " + e.options_.leadership);
      break;
    case wire::ControlOp::Workers:
      workers = views::Workers(fbb, e.fleet_, now_ms);
      break;
    case wire::ControlOp::Ha:
      if (e.options_.leadership_epoch == 0) {
        message = "this scheduler runs without --etcd: no leader election, no standby";
        break;
      }
      {
        std::vector<std::string> in_sync{e.options_.leader.node};
        std::vector<flatbuffers::Offset<wire::HaStandby>> standbys;
        uint64_t batches = 0;
        if (e.options_.leader.standbys) {
          for (const auto& st : e.options_.leader.standbys(&batches)) {
            if (st.in_sync) in_sync.push_back(st.node);
            standbys.push_back(
                wire::CreateHaStandbyDirect(fbb, st.node.c_str(), st.state.c_str(), st.acked, st.behind));
          }
        }
        auto in_sync_wire = codec::ToWire(fbb, in_sync);
        ha = wire::CreateHaView(fbb, fbb.CreateString(e.options_.leader.name), fbb.CreateString(e.options_.leader.node),
                                fbb.CreateString(e.options_.leader.describe), e.options_.leadership_epoch,
                                e.options_.leader.since_ms, e.options_.leader.forced, in_sync_wire,
                                fbb.CreateVector(standbys), batches);
        break;
      }
    case wire::ControlOp::Snapshot:
      if (target.empty() || target[0] != '/') {
        ok = false;
        message = "snapshot: \"" + target + "\" is not an absolute path (a new directory on the scheduler's host)";
        break;
      }
      // Written by the daemon once this turn is committed: the copy holds everything
      // acknowledged before the request.
      e.effects_.snapshots.push_back({from, req.correlation(), target});
      return;
    case wire::ControlOp::Tasks: {
      // A client sees only its own tasks; an operator (or a keyless cluster) all.
      std::optional<std::string> only_owner = e.ClientName(from);
      const std::string asked = Str(req.owner());
      if (only_owner && !asked.empty() && asked != *only_owner) {
        ok = false;
        message = "tasks --owner " + asked + ": a client sees only its own tasks (\"" + *only_owner +
                  "\"); an operator sees all";
        break;
      }
      // The waiting tasks not in memory are read from the store (q/, in id order): as
      // many as a page can take, when the filters let a waiting task through.
      const std::string state = Str(req.state());
      const bool waiting_listed =
          Str(req.worker()).empty() && (state.empty() || state == StateName(wire::TaskState::Pending));
      const std::string owner = only_owner ? *only_owner : Str(req.owner());
      const size_t limit = std::min<size_t>(req.limit() ? req.limit() : e.options_.task_page, e.options_.task_page);
      std::vector<Task> read;
      // One more than a page (so that the page knows more follow), and at most
      // kExamined records looked at: past that the page ends at the last one looked at
      // (tasks in memory beyond it wait for the next page), however selective the owner.
      constexpr size_t kExamined = 100000;
      uint64_t bound = std::numeric_limits<uint64_t>::max();
      if (waiting_listed && e.store_ != nullptr) {
        size_t examined = 0;
        Status scanned = records::ScanWaitingTasks(*e.store_, req.after(), [&](Task& t) {
          if (++examined == kExamined) bound = t.id;
          if (!e.active_.count(t.id) && (owner.empty() || t.owner == owner)) read.push_back(std::move(t));
          return read.size() <= limit && examined < kExamined;
        });
        if (!scanned.ok()) {
          ok = false;
          message = "tasks: " + scanned.message();
          break;
        }
      }
      views::TaskPage page = views::Tasks(
          fbb, req, e.options_.task_page,
          [&](const auto& visit) {
            auto within = [&](const Task& t) {
              if (t.id <= bound) visit(t);
            };
            for (const auto& [id, t] : e.active_) within(t);
            for (const Task& t : read) within(t);
            for (const Task& t : e.ended_.recent()) within(t);
          },
          only_owner);
      if (page.next == 0 && bound != std::numeric_limits<uint64_t>::max()) page.next = bound;  // more may follow it
      tasks = std::move(page.tasks);
      next_page = page.next;
      break;
    }
    case wire::ControlOp::Task: {
      Status found = TaskDetail(e, fbb, target, e.ClientName(from), &tasks, &events, now_ms);
      if (!found.ok()) {
        ok = false;
        message = found.message();
      }
      break;
    }
    case wire::ControlOp::Drain:
    case wire::ControlOp::Undrain: {
      const bool drain = req.op() == wire::ControlOp::Drain;
      MembershipVerdict verdict;
      auto done = e.membership_.SetDraining(target, drain, drain ? Str(req.reason()).substr(0, 512) : std::string(),
                                            now_ms, &verdict);
      ok = done.ok();
      message = ok ? *done : done.status().message();
      e.Apply(verdict, now_ms);
      break;
    }
    case wire::ControlOp::Group: {
      std::string owner;
      if (Status who = GroupOwner(e, from, req, &owner); !who.ok()) {
        ok = false;
        message = who.message();
        break;
      }
      const std::string name = Str(req.group());
      Groups::Ended ended;
      if (!e.groups_.Find(owner, name, &ended)) {
        ok = false;
        message = "no group \"" + name + "\"" + (owner.empty() ? "" : " of " + owner) +
                  " (never used, or its tasks ended longer ago than --task-retention-age)";
        break;
      }
      uint64_t counts[3] = {0, 0, 0};  // pending, queued, running
      for (uint64_t id : e.groups_.OpenTasks(owner, name)) {
        const Task* t = e.active_task(id);  // not in memory: waiting at q/, so pending
        ++counts[t == nullptr || t->state == wire::TaskState::Pending ? 0
                 : t->state == wire::TaskState::Queued                ? 1
                                                                      : 2];
      }
      group = wire::CreateGroupView(fbb, fbb.CreateString(name), owner.empty() ? 0 : fbb.CreateString(owner), counts[0],
                                    counts[1], counts[2], ended.succeeded, ended.failed, ended.cancelled);
      if (!e.waiting_loaded()) message = "the waiting tasks are still being read after a start: counts may rise";
      break;
    }
    case wire::ControlOp::Cancel: {
      if (target.empty() && req.group()) {
        // Every task of the group not ended, in this one turn (so in one commit).
        std::string owner;
        if (Status who = GroupOwner(e, from, req, &owner); !who.ok()) {
          ok = false;
          message = who.message();
          break;
        }
        if (!e.Authorized(from, bus::Action::kCancel, owner)) return;
        const std::string name = Str(req.group());
        if (!e.waiting_loaded()) {
          ok = false;
          message = "cancel --group: the waiting tasks are still being read after a start; try again in a moment";
          break;
        }
        // At most kMaxGroupCancel per request (each is read whole and written in one batch).
        constexpr size_t kMaxGroupCancel = 100000;
        std::vector<uint64_t> open = e.groups_.OpenTasks(owner, name);
        const size_t left = open.size() > kMaxGroupCancel ? open.size() - kMaxGroupCancel : 0;
        open.resize(open.size() - left);
        size_t cancelled = 0;
        for (uint64_t id : open) {
          Task* t = e.Load(id);
          if (t == nullptr) {
            if (e.read_error_.ok()) continue;  // ended meanwhile
            ok = false;
            break;
          }
          e.Cancel(t, from, now_ms);
          ++cancelled;
        }
        message = ok ? "cancelled " + std::to_string(cancelled) + " tasks of group \"" + name + "\"" +
                           (left > 0 ? "; " + std::to_string(left) + " more not ended: cancel the group again" : "")
                     : "cancel --group: the store could not be read after " + std::to_string(cancelled) +
                           " tasks were cancelled: " + e.read_error_.message();
        break;
      }
      uint64_t id = 0;
      std::optional<Task> read;  // looked at before it is held: a refused cancel holds nothing
      const Task* seen = ParseTaskName(target, &id) ? e.Peek(id, &read) : nullptr;
      if (seen == nullptr) {
        ok = false;
        message = "no task \"" + target + "\" that has not ended";
        break;
      }
      if (!e.Authorized(from, bus::Action::kCancel, seen->owner)) return;
      Task* t = e.Load(id);
      if (t == nullptr) {
        ok = false;
        message = "cannot read task " + TaskName(id) + " from the store";
        break;
      }
      message = "cancelled " + TaskName(id);
      e.Cancel(t, from, now_ms);
      break;
    }
  }
  auto reply =
      wire::CreateControlReply(fbb, req.correlation(), ok, fbb.CreateString(message), fbb.CreateVector(workers),
                               fbb.CreateVector(tasks), next_page, events.empty() ? 0 : fbb.CreateVector(events), ha,
                               req.op() == wire::ControlOp::Task ? e.log_.log_removed_through() : 0, group);
  e.Send(from, codec::Seal(fbb, reply));
}

void Handle(Engine& engine, const std::string& from, const wire::ControlRequest& req, uint64_t now_ms) {
  Internals::Handle(engine, from, req, now_ms);
}

}  // namespace fm::sched::control
