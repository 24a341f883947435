// Communicator over Gloo's TCP transport, for CPU workers.
#pragma once

#include "collectives/communicator.hpp"

#include <memory>
#include <string>

namespace gloo::transport {
class Device;
}

namespace cox::collectives {

// One TCP device per process: it listens on `hostname`'s address and serves
// every Gloo communicator of the process.
std::shared_ptr<gloo::transport::Device> make_gloo_device(const std::string& hostname);

// A group of `size` processes (this one is `rank`), not yet connected: it
// can be cancel()led from here on, also while connect_gloo() runs.
std::unique_ptr<Communicator> make_gloo(const std::shared_ptr<gloo::transport::Device>& device, int rank, int size,
                                        const CommOptions& options);
// Connects it: every pair of members gets a TCP connection; addresses
// travel through `exchange`. Past options.timeout (after the exchange), or
// once cancelled, it throws CommError.
void connect_gloo(Communicator& comm, const Exchange& exchange);

}  // namespace cox::collectives
