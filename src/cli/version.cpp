// borealis version: what this binary is and what it was built with.
#include <fmt/format.h>

#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/build_info.h"
#include "core/sysinfo.h"
#include "dist/launch_env.h"
#include "kernels/cpu/blas.h"

namespace borealis::cli {

Command add_version(CLI::App& parent) {
  auto json = std::make_shared<bool>(false);
  CLI::App* app = parent.add_subcommand(
      "version", "Print the version, source commit, build options and the backends compiled in");
  app->add_flag("--json", *json, "Print one JSON object instead of text");
  return {
      app, [json] {
        const BuildInfo& b = build_info();
        const BlasInfo blas = blas_info();
        const MpiInfo mpi = mpi_info();
        const std::string simd = cpu_info().simd_build;
        if (*json) {
          nlohmann::json j = {
              {"version", b.version},
              {"git_commit", b.git_commit},
              {"build_type", b.build_type},
              {"compiler", b.compiler},
              {"native_simd", b.native_simd},
              {"simd", simd},
              {"sanitizers", b.sanitizers},
              {"backends",
               {{"blas",
                 {{"compiled", b.blas}, {"library", blas.library}, {"threading", blas.threading}}},
                {"mpi", {{"compiled", b.mpi}, {"library", mpi.library}}},
                {"cuda",
                 {{"compiled", b.cuda},
                  {"toolkit", b.cuda_toolkit},
                  {"backend", b.cuda_backend},
                  {"architectures", b.cuda_architectures}}}}},
          };
          std::cout << j.dump(2) << '\n';
          return;
        }
        std::cout << fmt::format("borealis {} (commit {})\n", b.version, b.git_commit);
        std::cout << fmt::format("build     {}, {}, SIMD {}{}{}\n", b.build_type, b.compiler, simd,
                                 b.native_simd ? " (native)" : "",
                                 b.sanitizers ? ", ASan+UBSan" : "");
        std::cout << fmt::format("blas      yes: {} ({})\n", blas.library, blas.threading);
        std::cout << fmt::format("mpi       yes: {}\n",
                                 mpi.library.empty() ? "unknown" : mpi.library);
        std::cout << fmt::format(
            "cuda      {}\n",
            !b.cuda ? std::string("no")
            : b.cuda_backend
                ? fmt::format("yes: CUDA toolkit {}, backend for sm_{} (--device cuda)",
                              b.cuda_toolkit, b.cuda_architectures)
                : fmt::format("runtime only: CUDA toolkit {}, no backend (device "
                              "discovery for doctor)",
                              b.cuda_toolkit));
      }};
}

}  // namespace borealis::cli
