// layout_model: a paper model of 3D-parallel training (tensor x pipeline x
// data, Megatron-LM's layout as `borealis train` runs it) that ranks the
// layouts of a model on N nodes by predicted tokens/s and says which fit in
// memory.
//
//   build/release/bench/layout_model [--model llama-7b|llama-70b|PRESET]
//       [--system h100|aurora|custom] [--nodes 8,64] [--seq-len 4096]
//       [--global-batch 1024] [--micro-batch 1] [--top 5]
//       [--devices-per-node D] [--peak-tflops F] [--efficiency E]
//       [--intra-gbs B] [--inter-gbs B] [--memory-gib M] [--bytes 2|4]
//       [--measured-step S] [--layout TxPxD]
//
// Per step of m = global_batch / (D x micro_batch) micro-batches of
// N = micro_batch x seq_len tokens (docs/parallelism.md, "Choosing a
// layout"):
//   stage time per micro-batch  t_s = compute_s + tensor_s + p2p_s
//     compute_s = 3 x N x (layers_s x layer_flops + head_s) / T / rate
//                 (forward + backward = 3 forwards; the last stage also
//                 runs the output layer and loss, V x C per token)
//     tensor_s  = (4 layers_s + 1) allreduces of N x C activations over the
//                 T ranks: 2 (T - 1) / T of the bytes at the tensor link's
//                 bandwidth (within a node while T <= devices per node)
//     p2p_s     = the micro-batch's N x C activations and gradients to and
//                 from the neighbouring stages (between nodes when a stage
//                 fills whole nodes)
//   pipeline    (m - 1) max_s t_s + sum_s t_s (1F1B: the slowest stage sets
//               the pace, every stage adds its fill and drain once)
//   data        an allreduce of the stage's gradients (2 (D - 1) / D of
//               them, in fp32) between nodes, not overlapped: a
//               conservative bound
//   tied        an allreduce of V x C / T fp32 gradients between the first
//               and last stage (tied embeddings)
// Memory per device: weights (bf16) + fp32 master weights + fp32
// gradients + AdamW moments (fp32, / D with ZeRO-1), and the first stage's
// activations: min(P, m) micro-batches in flight, each layer keeping
// (4 C + qkv + attention out + MLP in) values per token (/ T for the split
// ones), as Borealis's engine does.
//
// The device rate is peak x efficiency, or (--measured-step) calibrated
// from a measured one-device step of the same model and batch: what
// bench/train_bench or `borealis train` reports on that device. The link
// bandwidths are the ones `borealis doctor --dist` measures (or, for the
// built-in systems, the published per-device figures, which the paper
// model takes at face value).
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "bench_util.h"
#include "core/error.h"
#include "model/config.h"

namespace borealis {
namespace {

struct System {
  std::string name;
  int devices_per_node = 8;
  double peak_tflops = 989;  // dense bf16 per device
  double efficiency = 0.5;   // of the peak the GEMMs reach
  double intra_gbs = 450;    // per device, one direction, within a node
  double inter_gbs = 50;     // per device, one direction, between nodes
  double memory_gib = 80;
  int bytes = 2;  // of an activation (and of a weight's working copy)
};

System preset_system(const std::string& name) {
  System s;
  s.name = name;
  if (name == "h100") {
    // DGX H100-like: 8 GPUs, NVLink 4 (450 GB/s each way per GPU), one
    // 400 Gb/s NIC per GPU.
    return s;
  }
  if (name == "aurora") {
    // Aurora-like: 6 GPUs of 2 tiles each, one rank per tile (12 per
    // node); per tile half of a GPU's ~839 TFLOP/s bf16 and 128 GB; 8
    // Slingshot-11 NICs of 25 GB/s per node shared by the 12 tiles; Xe Link
    // between GPUs taken as 50 GB/s per tile.
    s.devices_per_node = 12;
    s.peak_tflops = 419;
    s.intra_gbs = 50;
    s.inter_gbs = 200.0 / 12;
    s.memory_gib = 64;
    return s;
  }
  if (name == "custom") return s;
  throw Error(fmt::format("unknown system '{}' (h100, aurora, custom)", name), "--system");
}

ModelConfig model_of(const std::string& name) {
  ModelConfig c;
  if (name == "llama-7b") {
    c = model_preset("llama-110m");
    c.name = name;
    c.n_layer = 32;
    c.n_head = c.n_kv_head = 32;
    c.d_model = 4096;
    c.d_ff = 11008;
    c.vocab_size = 32000;
    c.padded_vocab = pad_vocab(32000);
    c.max_seq = 4096;
    c.tied_embeddings = false;
    return c;
  }
  if (name == "llama-70b") {
    c = model_of("llama-7b");
    c.name = name;
    c.n_layer = 80;
    c.n_head = 64;
    c.n_kv_head = 8;
    c.d_model = 8192;
    c.d_ff = 28672;
    return c;
  }
  return model_preset(name);
}

struct Layout {
  int T = 1, P = 1, D = 1;
};

struct Prediction {
  Layout layout;
  int m = 0;
  double step_s = 0, compute_s = 0, tensor_s = 0, bubble_s = 0, data_s = 0, p2p_s = 0, tied_s = 0;
  double tokens_per_s = 0, mfu = 0, memory_gib = 0;
  bool fits = false;
  std::string why;  // when it cannot run
};

struct Shape {
  double layer_flops = 0;  // forward, per token
  double head_flops = 0;   // forward, per token
  double layer_params = 0, embed_params = 0, head_params = 0;
  double act_whole = 0, act_split = 0;  // values per token per layer: cut by SP / by TP
};

Shape shape_of(const ModelConfig& c, int seq) {
  Shape s;
  const double C = c.d_model, S = c.qkv_width(), FW = c.fc_width(), F = c.d_ff;
  s.layer_params = C * S + C * C + C * FW + F * C;
  // Matmuls, and causal attention (QK^T and AV over seq / 2 keys on average).
  s.layer_flops = 2 * s.layer_params + 2.0 * seq * C;
  s.head_flops = 2.0 * c.padded_vocab * C;
  s.embed_params = static_cast<double>(c.padded_vocab) * C;
  s.head_params = c.tied_embeddings ? 0 : s.embed_params;
  s.act_whole = 4 * C;       // ln1, res2, ln2, res3 (sequence parallel cuts them)
  s.act_split = S + C + FW;  // qkv, attention output, MLP input (tensor parallel cuts them)
  return s;
}

struct Run {
  int seq = 4096, global_batch = 1024, micro = 1, nodes = 1;
  double rate = 0;  // device FLOP/s
};

// Collective time of `bytes` over a group of n at `gbs` GB/s per device.
double allreduce_s(double bytes, int n, double gbs) {
  return n <= 1 ? 0 : 2.0 * (n - 1) / n * bytes / (gbs * 1e9);
}

Prediction predict(const ModelConfig& c, const Shape& sh, const System& sys, const Run& run,
                   Layout l) {
  Prediction p;
  p.layout = l;
  const int L = c.n_layer;
  if (c.n_head % l.T || c.n_kv_head % l.T || c.d_ff % l.T || c.padded_vocab % l.T) {
    p.why = "heads, kv heads, d_ff or vocabulary do not divide by T";
    return p;
  }
  if (L % l.P) {
    p.why = "layers do not divide by P";
    return p;
  }
  if (run.global_batch % (l.D * run.micro)) {
    p.why = "global batch does not divide into D x micro-batch";
    return p;
  }
  p.m = run.global_batch / (l.D * run.micro);
  const double N = static_cast<double>(run.micro) * run.seq;
  const double C = c.d_model, b = sys.bytes;
  const int per_node = sys.devices_per_node;
  const double tensor_gbs = l.T <= per_node ? sys.intra_gbs : sys.inter_gbs;
  // A stage fills whole nodes once T x D ranks reach a node's devices.
  const double p2p_gbs = l.T * l.D >= per_node ? sys.inter_gbs : sys.intra_gbs;
  const double layers = static_cast<double>(L) / l.P;
  std::vector<double> stage(static_cast<std::size_t>(l.P));
  double compute_total = 0, tensor_total = 0, p2p_total = 0;
  for (int s = 0; s < l.P; ++s) {
    const bool last = s == l.P - 1;
    const double flops = 3 * N * (layers * sh.layer_flops + (last ? sh.head_flops : 0)) / l.T;
    const double compute = flops / run.rate;
    const double tensor = (4 * layers + 1) * allreduce_s(N * C * b, l.T, tensor_gbs);
    const double p2p = ((s > 0) + (s < l.P - 1)) * N * C * b / (p2p_gbs * 1e9);
    stage[static_cast<std::size_t>(s)] = compute + tensor + p2p;
    compute_total += compute;
    tensor_total += tensor;
    p2p_total += p2p;
  }
  const double slowest = *std::max_element(stage.begin(), stage.end());
  double fill = 0;
  for (const double t : stage) fill += t;
  const double pipeline = (p.m - 1) * slowest + fill;
  // Per stage: its layers' parameters (the first also the embedding, the
  // last the output layer), cut by T.
  const double stage_params =
      (layers * sh.layer_params + sh.embed_params + (l.P == 1 ? sh.head_params : 0)) / l.T;
  const double last_params = (layers * sh.layer_params + sh.head_params +
                              (c.tied_embeddings && l.P > 1 ? sh.embed_params : 0)) /
                             l.T;
  const double params = std::max(stage_params, last_params);
  p.data_s = allreduce_s(params * 4, l.D, sys.inter_gbs);
  p.tied_s = c.tied_embeddings && l.P > 1 ? allreduce_s(sh.embed_params / l.T * 4, 2, p2p_gbs) : 0;
  p.step_s = pipeline + p.data_s + p.tied_s;
  p.compute_s = compute_total / l.P * p.m;  // a stage's, on average
  p.tensor_s = tensor_total / l.P * p.m;
  p.p2p_s = p2p_total / l.P * p.m;
  p.bubble_s = pipeline - (compute_total + tensor_total + p2p_total) / l.P * p.m;
  const double tokens = static_cast<double>(run.global_batch) * run.seq;
  p.tokens_per_s = tokens / p.step_s;
  const double model_flops = 3 * tokens * (L * sh.layer_flops + sh.head_flops);
  p.mfu = model_flops / p.step_s / (l.T * l.P * l.D * sys.peak_tflops * 1e12);
  // Memory: bf16 weights, fp32 master weights, fp32 gradients, AdamW
  // moments sharded over D (ZeRO-1); the first stage's activations.
  // (In float, as on the CPU, the weights are the master weights.)
  const double states = params * (b + (b == 4 ? 0 : 4) + 4 + 8.0 / l.D);
  const double in_flight = std::min(l.P, p.m);
  const double acts = in_flight * layers * N * b * (sh.act_whole / l.T + sh.act_split / l.T);
  p.memory_gib = (states + acts) / std::pow(2.0, 30);
  p.fits = p.memory_gib <= 0.9 * sys.memory_gib;
  if (!p.fits) p.why = "does not fit in memory";
  return p;
}

void print_row(const Prediction& p) {
  std::printf(
      "  TP%-2d PP%-3d DP%-5d m %-5d %8.3f s  %12.0f tok/s  MFU %5.1f%%  %6.1f GiB  "
      "compute %.3f  tensor %.3f  bubble %.3f  data %.3f%s\n",
      p.layout.T, p.layout.P, p.layout.D, p.m, p.step_s, p.tokens_per_s, 100 * p.mfu, p.memory_gib,
      p.compute_s, p.tensor_s, p.bubble_s, p.data_s,
      p.tied_s > 0 ? fmt::format("  tied {:.3f}", p.tied_s).c_str() : "");
}

int main_impl(int argc, char** argv) {
  std::vector<std::string> models = {"llama-7b", "llama-70b"};
  std::vector<std::string> systems = {"h100", "aurora"};
  std::vector<int> nodes = {8, 64};
  Run run;
  int top = 5;
  System custom = preset_system("custom");
  bool custom_set = false;
  double measured_step = 0;
  std::string layout_text;
  for (int i = 1; i < argc; i += 2) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) throw Error("missing value", flag);
    const std::string v = argv[i + 1];
    const auto number = [&] {
      char* end = nullptr;
      const double x = std::strtod(v.c_str(), &end);
      if (end == v.c_str() || *end != '\0' || !(x > 0))
        throw Error("expects a positive number", flag);
      return x;
    };
    if (flag == "--model") {
      models = {v};
    } else if (flag == "--system") {
      systems = {v};
    } else if (flag == "--nodes") {
      nodes = bench::parse_int_list(flag, v);
    } else if (flag == "--seq-len") {
      run.seq = bench::parse_positive_int(flag, v.c_str());
    } else if (flag == "--global-batch") {
      run.global_batch = bench::parse_positive_int(flag, v.c_str());
    } else if (flag == "--micro-batch") {
      run.micro = bench::parse_positive_int(flag, v.c_str());
    } else if (flag == "--top") {
      top = bench::parse_positive_int(flag, v.c_str());
    } else if (flag == "--devices-per-node") {
      custom.devices_per_node = bench::parse_positive_int(flag, v.c_str());
      custom_set = true;
    } else if (flag == "--peak-tflops") {
      custom.peak_tflops = number();
      custom_set = true;
    } else if (flag == "--efficiency") {
      custom.efficiency = number();
      custom_set = true;
    } else if (flag == "--intra-gbs") {
      custom.intra_gbs = number();
      custom_set = true;
    } else if (flag == "--inter-gbs") {
      custom.inter_gbs = number();
      custom_set = true;
    } else if (flag == "--memory-gib") {
      custom.memory_gib = number();
      custom_set = true;
    } else if (flag == "--bytes") {
      custom.bytes = bench::parse_positive_int(flag, v.c_str());
      custom_set = true;
    } else if (flag == "--measured-step") {
      measured_step = number();
    } else if (flag == "--layout") {
      layout_text = v;
    } else {
      throw Error(
          "unknown flag (--model, --system, --nodes, --seq-len, --global-batch, --micro-batch, "
          "--top, --devices-per-node, --peak-tflops, --efficiency, --intra-gbs, --inter-gbs, "
          "--memory-gib, --bytes, --measured-step, --layout)",
          flag);
    }
  }
  if (custom_set) systems = {"custom"};
  for (const std::string& model_name : models) {
    const ModelConfig c = model_of(model_name);
    const Shape sh = shape_of(c, run.seq);
    const double params = c.n_layer * sh.layer_params + sh.embed_params + sh.head_params;
    for (const std::string& system_name : systems) {
      const System sys = system_name == "custom" ? custom : preset_system(system_name);
      Run r = run;
      r.rate = sys.peak_tflops * 1e12 * sys.efficiency;
      if (measured_step > 0) {
        // The device rate that gives the measured one-device step.
        r.rate = 3.0 * r.global_batch * r.seq * (c.n_layer * sh.layer_flops + sh.head_flops) /
                 measured_step;
      }
      for (const int n : nodes) {
        r.nodes = n;
        const int devices = n * sys.devices_per_node;
        std::printf(
            "\n%s (%.2fB parameters, %d layers, d_model %d) on %d %s node%s (%d devices, %.3g "
            "TFLOP/s each%s, %.3g / %.3g GB/s within / between nodes, %.0f GiB), %d x %d tokens "
            "per step\n",
            model_name.c_str(), params / 1e9, c.n_layer, c.d_model, n, sys.name.c_str(),
            n == 1 ? "" : "s", devices, r.rate / 1e12,
            measured_step > 0
                ? " (from the measured step)"
                : fmt::format(" ({:.0f}% of {:.0f})", 100 * sys.efficiency, sys.peak_tflops)
                      .c_str(),
            sys.intra_gbs, sys.inter_gbs, sys.memory_gib, r.global_batch, r.seq);
        std::vector<Prediction> all;
        if (!layout_text.empty()) {
          Layout l;
          if (std::sscanf(layout_text.c_str(), "%dx%dx%d", &l.T, &l.P, &l.D) != 3 ||
              l.T * l.P * l.D != devices) {
            throw Error(fmt::format("expects TxPxD with T x P x D = {} devices", devices),
                        "--layout");
          }
          all.push_back(predict(c, sh, sys, r, l));
        } else {
          for (int T = 1; T <= devices; T *= 2) {
            for (int P = 1; T * P <= devices; ++P) {
              if (devices % (T * P) != 0) continue;
              all.push_back(predict(c, sh, sys, r, {T, P, devices / (T * P)}));
            }
          }
        }
        std::vector<Prediction> fit;
        for (const Prediction& p : all) {
          if (p.fits) fit.push_back(p);
        }
        std::sort(fit.begin(), fit.end(), [](const Prediction& a, const Prediction& b) {
          return a.tokens_per_s > b.tokens_per_s;
        });
        if (fit.empty()) {
          // Why not, for each reason the layouts gave.
          std::vector<std::string> reasons;
          for (const Prediction& p : all) {
            if (std::find(reasons.begin(), reasons.end(), p.why) == reasons.end()) {
              reasons.push_back(p.why);
            }
          }
          std::string why;
          for (const std::string& w : reasons) why += (why.empty() ? "" : "; ") + w;
          std::printf("  no layout of %d devices runs: %s\n", devices, why.c_str());
          if (all.size() == 1 && all[0].m > 0) print_row(all[0]);
          continue;
        }
        for (std::size_t i = 0; i < fit.size() && i < static_cast<std::size_t>(top); ++i) {
          print_row(fit[i]);
        }
      }
    }
  }
  return 0;
}

}  // namespace
}  // namespace borealis

int main(int argc, char** argv) {
  return borealis::bench::main_with_errors([&] { return borealis::main_impl(argc, argv); },
                                           "see the usage at the top of bench/layout_model.cpp");
}
