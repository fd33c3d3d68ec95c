// Records what libsentencepiece (Debian 0.1.97) encodes for random hostile strings, so that
// gemma_tokenizer_test can check GemmaTokenizer against the library without linking it (the
// library's exported protobuf-lite cannot share a process with LibTorch's libprotobuf).
//
// Build and run by hand (links only libsentencepiece, no project code):
//   g++ -std=c++17 make_cases.cc -o make_cases -lsentencepiece_train -lsentencepiece
//   ./make_cases cases.json   (writes corpus.txt, trains dflt.model and suffix.model here)
// Text is stored as hex because the strings include malformed UTF-8.
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace {

std::string Hex(const std::string& s) {
  static const char* kDigits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out += kDigits[c >> 4];
    out += kDigits[c & 15];
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  // A small deterministic training corpus.
  const std::string corpus = "corpus.txt";
  {
    const std::vector<std::string> words = {"the", "quick", "brown", "fox", "jumps", "over",
                                            "lazy", "dog", "caf\xc3\xa9", "na\xc3\xafve",
                                            "\xe6\x97\xa5\xe6\x9c\xac", "  ", "hello",
                                            "world", "ing", "and", "123", "4567"};
    std::mt19937 rng(1);
    std::ofstream out(corpus);
    for (int line = 0; line < 3000; ++line) {
      const int n = 1 + static_cast<int>(rng() % 12);
      for (int k = 0; k < n; ++k) out << (k ? " " : "") << words[rng() % words.size()];
      out << "\n";
    }
  }
  FILE* json = std::fopen(argv[1], "w");
  if (json == nullptr) return 1;
  // Two models covering the normaliser options the Gemma-like fixture does not use: the
  // defaults (dummy prefix, extra-whitespace removal) with byte fallback and user-defined
  // symbols, and whitespace-as-suffix without byte fallback (merged unknown runs).
  const std::vector<std::pair<std::string, std::string>> models = {
      {"dflt", "--model_type=bpe --vocab_size=420 --byte_fallback=true "
               "--user_defined_symbols=<x>,<yy> --normalization_rule_name=identity"},
      {"suffix", "--model_type=bpe --vocab_size=150 --hard_vocab_limit=false "
                 "--treat_whitespace_as_suffix=true --normalization_rule_name=identity"},
  };
  const std::vector<std::string> atoms = {
      "a", "b", "e", "t", "h", " ", "  ", "\n", "\t", "\xc3\xa9", "\xc3\x9f", "\xe6\x97\xa5",
      "\xf0\x9f\x98\x80", "\xcc\x81", "<x>", "<yy>", "<bos>", "the", "ing", " and", "1", "23",
      "\xff", "\xc3", "\xe2\x96\x81", "\xe3\x80\x80", "R", "x", "\r", "\x01", " the", "quick"};
  std::fprintf(json, "{\"cases\": [\n");
  bool first = true;
  for (const auto& [name, flags] : models) {
    auto status = sentencepiece::SentencePieceTrainer::Train(
        "--input=" + corpus + " --model_prefix=" + name + " --num_threads=1 --minloglevel=2 " +
        flags);
    if (!status.ok()) return 1;
    sentencepiece::SentencePieceProcessor sp;
    if (!sp.Load(name + ".model").ok()) return 1;
    std::mt19937 rng(7);
    for (int i = 0; i < 150; ++i) {
      std::string text;
      const int n = static_cast<int>(rng() % 24);
      for (int k = 0; k < n; ++k) text += atoms[rng() % atoms.size()];
      std::vector<int> ids;
      sp.Encode(text, &ids).IgnoreError();
      std::fprintf(json, "%s{\"model\": \"%s.model\", \"text_hex\": \"%s\", \"ids\": [", first ? "" : ",\n",
                  name.c_str(), Hex(text).c_str());
      for (size_t j = 0; j < ids.size(); ++j) std::fprintf(json, "%s%d", j ? ", " : "", ids[j]);
      std::fprintf(json, "]}");
      first = false;
    }
  }
  std::fprintf(json, "\n]}\n");
  std::fclose(json);
  return 0;
}
