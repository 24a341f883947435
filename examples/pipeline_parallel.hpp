// Pipeline-parallel training on a {pp, dp} mesh: the model's layers are split
// into stages along "pp", each stage's layers living on its sub-mesh
// mesh.slice("pp", s); activations go forward and their gradients back with
// to_mesh; each step runs micro-batches in a GPipe schedule (all forwards,
// then all backwards in reverse), gradients averaged over "dp" per stage,
// AdamW per stage. The controller issues the whole schedule in program
// order; the stages overlap on their own, since each works through its own
// stream as soon as its input arrives.
#pragma once

#include "training.hpp"

#include <cox/errors.hpp>

#include <optional>

namespace cox::examples {

class PipelineTrainer {
 public:
  PipelineTrainer(const DeviceMesh& mesh, TrainingConfig c) : c_(c) {
    const int64_t stages = mesh.size("pp");
    if (c_.layers < stages) throw InvalidArgument("pipeline: fewer layers than stages");
    if (c_.micro_batches < 1 || c_.batch % c_.micro_batches != 0) {
      throw InvalidArgument("pipeline: the batch must split into micro_batches equal parts");
    }
    for (int64_t s = 0; s < stages; ++s) {
      Stage st{mesh.slice("pp", s), {}, {}};
      // Layers [begin, end) of the model on stage s, as even as they go.
      const int64_t begin = s * c_.layers / stages, end = (s + 1) * c_.layers / stages;
      st.params = make_layers(st.mesh, c_, begin, end);
      stages_.push_back(std::move(st));
    }
    teacher_.emplace(stages_.front().mesh, c_);
  }

  // The first stage's batch for micro-batch m of `step` (each dp replica its own).
  std::pair<Tensor, Tensor> micro_batch(int64_t step, int64_t m) {
    return teacher_->batch(stages_.front().mesh, c_, step * c_.micro_batches + m, c_.batch / c_.micro_batches);
  }

  // One GPipe step over the given micro-batches (micro_batch(step, m) for
  // each m); returns each micro-batch's loss, on the last stage.
  std::vector<Tensor> step(int64_t step, const std::vector<std::pair<Tensor, Tensor>>& batches) {
    const size_t S = stages_.size(), M = batches.size();
    // inputs[s][m]: what stage s received (a leaf, for its gradient);
    // outputs[s][m]: what it computed from it.
    std::vector<std::vector<Tensor>> inputs(S, std::vector<Tensor>(M)), outputs(S, std::vector<Tensor>(M));
    std::vector<Tensor> losses(M);
    for (size_t m = 0; m < M; ++m) {
      Tensor act = batches[m].first;
      for (size_t s = 0; s < S; ++s) {
        if (s > 0) {
          act = act.to_mesh(stages_[s].mesh);
          act.requires_grad_();
          inputs[s][m] = act;
        }
        act = apply_layers(stages_[s].params, act, /*ends_model=*/s + 1 == S);
        outputs[s][m] = act;
      }
      const Tensor labels = batches[m].second.to_mesh(stages_.back().mesh);
      losses[m] = cross_entropy(act, labels);
    }
    // Backward, last micro-batch first; each stage's input gradient goes to
    // the stage before.
    for (size_t m = M; m-- > 0;) {
      (losses[m] * (1.0 / static_cast<double>(M))).backward();
      for (size_t s = S - 1; s > 0; --s) {
        outputs[s - 1][m].backward(inputs[s][m].grad().to_mesh(stages_[s - 1].mesh));
      }
    }
    for (auto& st : stages_) {
      std::vector<Tensor> grads = average_gradients(st.params, {"dp"}, c_.bucket_bytes);
      NoGradGuard no_grad(st.mesh);
      st.opt.step(st.params, grads, learning_rate(c_, step), c_.weight_decay);
    }
    return losses;
  }

  // Every stage's parameters, in model order.
  std::vector<Tensor> params() const {
    std::vector<Tensor> all;
    for (const auto& st : stages_) all.insert(all.end(), st.params.begin(), st.params.end());
    return all;
  }
  const DeviceMesh& stage_mesh(size_t s) const { return stages_.at(s).mesh; }
  size_t stages() const { return stages_.size(); }

 private:
  struct Stage {
    DeviceMesh mesh;
    std::vector<Tensor> params;
    AdamW opt;
  };
  TrainingConfig c_;
  std::vector<Stage> stages_;
  std::optional<Teacher> teacher_;
};

}  // namespace cox::examples
