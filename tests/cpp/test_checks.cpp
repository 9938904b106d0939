#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

#include "csrc/message_layout.h"
#include "csrc/ops.h"

namespace efcomm {
namespace {

// Runs fn, expects a c10::Error whose message contains every fragment.
template <typename Fn>
void expect_error_naming(Fn fn, std::initializer_list<const char*> fragments) {
  try {
    fn();
    ADD_FAILURE() << "expected an error";
  } catch (const c10::Error& e) {
    const std::string message = e.what_without_backtrace();
    for (const char* fragment : fragments) {
      EXPECT_NE(message.find(fragment), std::string::npos) << "'" << fragment << "' missing from: " << message;
    }
  }
}

TEST(Checks, TopkRejectsBadK) {
  const at::Tensor x = torch::randn({5});
  expect_error_naming([&] { topk_cpu(x, 0); }, {"topk", "k (0)"});
  expect_error_naming([&] { topk_cpu(x, 6); }, {"k (6)", "number of elements (5)"});
}

TEST(Checks, TopkRejectsIntegerInput) {
  expect_error_naming([&] { topk_cpu(torch::arange(5), 1); }, {"x", "Long"});
}

TEST(Checks, EncodeRejectsMismatchedState) {
  const at::Tensor a = torch::randn({8});
  expect_error_naming([&] { topk_encode_cpu(a, torch::zeros({9}), 2); }, {"topk_encode_", "b", "[9]", "[8]"});
  expect_error_naming([&] { topk_encode_cpu(a, torch::zeros({8}, torch::kHalf), 2); }, {"b", "Half"});
  expect_error_naming([&] { topk_encode_cpu(a, torch::zeros({16}).slice(0, 0, 16, 2), 2); }, {"b", "contiguous"});
  expect_error_naming([&] { dense_encode_cpu(a, torch::zeros({8}), std::nullopt, NAN); },
                      {"dense_encode_", "scale (nan)"});
  expect_error_naming([&] { randk_encode_cpu(a, std::nullopt, 2, 0, 0, 0, false, 1.0, -1); }, {"rank (-1)"});
}

TEST(Checks, DecodeRejectsWrongMessageSizeAndWeights) {
  at::Tensor h = torch::zeros({8});
  expect_error_naming([&] { topk_decode_add_cpu(h, torch::zeros({2, 12}, torch::kByte), 2); },
                      {"gathered", "12", "16"});
  expect_error_naming([&] { topk_decode_add_cpu(h, torch::zeros({2, 16}, torch::kFloat), 2); }, {"gathered", "uint8"});
  const at::Tensor rows = torch::zeros({2, 16}, torch::kByte);
  expect_error_naming([&] { topk_decode_add_cpu(h, rows, 2, 1.0, torch::ones({3})); },
                      {"weights has 3 entries", "2 messages"});
  expect_error_naming([&] { topk_decode_add_cpu(h, rows, 2, 1.0, torch::ones({2}, torch::kDouble)); },
                      {"weights", "Double"});
  expect_error_naming([&] { topk_decode_add_cpu(h, rows, 2, 1.0, torch::tensor({1.0f, INFINITY})); },
                      {"weights holds a non-finite value (inf at 1)"});
}

TEST(Checks, QuantizerConfiguration) {
  const at::Tensor x = torch::ones({64});
  expect_error_naming([&] { quant_encode_cpu(x, std::nullopt, "bits", 0, 64, false, 0, 0, 0, 0); },
                      {"scheme ('bits')", "'qsgd', 'natural', 'sign', 'int8', 'fp8', 'int4'"});
  expect_error_naming([&] { quant_encode_cpu(x, std::nullopt, "qsgd", 128, 64, true, 0, 0, 0, 0); },
                      {"levels (128) must be in [1, 127] for qsgd"});
  expect_error_naming([&] { quant_encode_cpu(x, std::nullopt, "natural", 0, 64, false, 0, 0, 0, 0); },
                      {"stochastic (false) must be true for scheme 'natural'"});
  expect_error_naming([&] { quant_encode_cpu(x, std::nullopt, "int8", 0, 96 + 1, false, 0, 0, 0, 0); }, {"block (97)"});
}

TEST(Checks, MessageNbytes) {
  EXPECT_EQ(message_nbytes("topk", 10, at::kFloat, 1, "", 0, 0), 8);
  EXPECT_EQ(message_nbytes("topk", 10, at::kHalf, 1, "", 0, 0), 8);  // 2 value bytes + 2 padding + 4
  EXPECT_EQ(message_nbytes("topk", 10, at::kBFloat16, 3, "", 0, 0), 20);
  EXPECT_EQ(message_nbytes("randk", 10, at::kBFloat16, 3, "", 0, 0), 8);
  EXPECT_EQ(message_nbytes("dense", 5, at::kHalf, 0, "", 0, 0), 12);
  EXPECT_EQ(message_nbytes("quant", 255, at::kFloat, 0, "int8", 0, 256), 4 + 256);
  expect_error_naming([&] { message_nbytes("topk", 10, at::kFloat, 0, "", 0, 0); }, {"k (0)"});
  expect_error_naming([&] { message_nbytes("dense", 4, at::kDouble, 0, "", 0, 0); }, {"dtype (Double)"});
  expect_error_naming([&] { message_nbytes("sparse", 4, at::kFloat, 0, "", 0, 0); }, {"family ('sparse')"});
}

}  // namespace
}  // namespace efcomm
