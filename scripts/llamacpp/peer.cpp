// A small llama.cpp client for Modula's interop checks (scripts/llamacpp/interop.sh).
//
//   peer MODEL.gguf tokenize TEXT          -> {"ids":[...]}   (no special tokens added)
//   peer MODEL.gguf logits ID,ID,...       -> {"logits":[[...],...]}  one row per position,
//                                             each a decode of one token (KV cache)
//   peer MODEL.gguf greedy ID,ID,... N     -> {"ids":[...]}   N greedy tokens after the ids
//
// Built against the libllama of scripts/llamacpp/build.sh. Everything llama.cpp logs goes
// to stderr; stdout is one JSON object.
#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

static std::vector<llama_token> parse_ids(const char *s) {
    std::vector<llama_token> out;
    while (*s) {
        char *end = nullptr;
        long v = std::strtol(s, &end, 10);
        if (end == s) break;
        out.push_back((llama_token)v);
        s = (*end == ',') ? end + 1 : end;
    }
    return out;
}

static void quiet(enum ggml_log_level, const char *, void *) {}

int main(int argc, char **argv) {
    if (argc < 4) {
        std::fprintf(stderr, "usage: %s MODEL tokenize TEXT | logits IDS | greedy IDS N\n", argv[0]);
        return 2;
    }
    if (!std::getenv("PEER_VERBOSE")) llama_log_set(quiet, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    mp.vocab_only = std::strcmp(argv[2], "tokenize") == 0;
    llama_model *model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        std::fprintf(stderr, "peer: llama.cpp cannot load %s\n", argv[1]);
        return 1;
    }
    const llama_vocab *vocab = llama_model_get_vocab(model);
    std::string mode = argv[2];
    if (mode == "tokenize") {
        std::string text = argv[3];
        int n = -llama_tokenize(vocab, text.c_str(), text.size(), nullptr, 0, false, true);
        std::vector<llama_token> ids(n > 0 ? n : 0);
        if (n > 0) llama_tokenize(vocab, text.c_str(), text.size(), ids.data(), n, false, true);
        std::printf("{\"ids\":[");
        for (size_t i = 0; i < ids.size(); i++) std::printf(i ? ",%d" : "%d", ids[i]);
        std::printf("]}\n");
        return 0;
    }
    std::vector<llama_token> ids = parse_ids(argv[3]);
    int gen = (mode == "greedy" && argc > 4) ? std::atoi(argv[4]) : 0;
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = ids.size() + gen + 8;
    cp.n_batch = cp.n_ctx;
    cp.n_threads = 1;
    cp.n_threads_batch = 1;
    // an f32 cache (llama.cpp's default is f16), so the comparison measures the arithmetic
    cp.type_k = GGML_TYPE_F32;
    cp.type_v = GGML_TYPE_F32;
    // and no flash attention (on the CPU it rounds through f16); PEER_FLASH=1 turns it on
    cp.flash_attn_type = std::getenv("PEER_FLASH") ? LLAMA_FLASH_ATTN_TYPE_ENABLED
                                                   : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        std::fprintf(stderr, "peer: no context\n");
        return 1;
    }
    const int nv = llama_vocab_n_tokens(vocab);
    auto step = [&](llama_token t) -> const float * {
        llama_batch b = llama_batch_get_one(&t, 1);
        if (llama_decode(ctx, b) != 0) {
            std::fprintf(stderr, "peer: decode failed\n");
            std::exit(1);
        }
        return llama_get_logits_ith(ctx, -1);
    };
    if (mode == "logits") {
        std::printf("{\"logits\":[");
        for (size_t i = 0; i < ids.size(); i++) {
            const float *l = step(ids[i]);
            std::printf(i ? ",[" : "[");
            for (int j = 0; j < nv; j++) std::printf(j ? ",%.9g" : "%.9g", l[j]);
            std::printf("]");
        }
        std::printf("]}\n");
    } else if (mode == "greedy") {
        const float *l = nullptr;
        for (llama_token t : ids) l = step(t);
        std::printf("{\"ids\":[");
        for (int g = 0; g < gen; g++) {
            int best = 0;
            for (int j = 1; j < nv; j++) if (l[j] > l[best]) best = j;
            std::printf(g ? ",%d" : "%d", best);
            l = step(best);
        }
        std::printf("]}\n");
    } else {
        std::fprintf(stderr, "peer: unknown mode %s\n", mode.c_str());
        return 2;
    }
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
