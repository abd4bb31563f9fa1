// The reserved identities on a broker: who a directed message is for or from.
#pragma once

namespace fm::bus {

inline constexpr const char* kSchedulerAddress = "fm-scheduler";
inline constexpr const char* kBrokerAddress = "fm-broker";

}  // namespace fm::bus
