// Typed access to the fields of a JSON object (config.json, or an object inside it) that
// names the file and the field in every error. Used by runtime/config.cpp and the family
// descriptions of model/arch/.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/error.h"

namespace phi3 {

inline std::string describe(const nlohmann::json& v) {
  if (v.is_number_float()) return "non-integer number " + v.dump();
  if (v.is_number()) return "number " + v.dump();
  return v.type_name();
}

// Typed field access that names the source and the field in every error.
class ConfigFields {
 public:
  ConfigFields(const nlohmann::json& obj, std::string source, std::string prefix)
      : obj_(obj), source_(std::move(source)), prefix_(std::move(prefix)) {}

  [[noreturn]] void fail(const std::string& field, const std::string& msg) const {
    throw Error(source_ + ": field '" + prefix_ + field + "': " + msg);
  }
  bool present(const std::string& field) const { return obj_.contains(field) && !obj_[field].is_null(); }
  const nlohmann::json& at(const std::string& field) const { return obj_[field]; }

  // The object at `field` (or `obj`, standing for it), its errors naming field.key.
  ConfigFields sub(const std::string& field) const { return sub_of(obj_[field], field); }
  ConfigFields sub_of(const nlohmann::json& obj, const std::string& field) const {
    return ConfigFields(obj, source_, prefix_ + field + ".");
  }

  int64_t integer(const std::string& field) const {
    const nlohmann::json& v = obj_[field];
    if (!(v.is_number_integer() || v.is_number_unsigned()))
      fail(field, "expected an integer, got " + describe(v));
    if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int>::max()))
      fail(field, "value " + v.dump() + " is too large");
    int64_t x = v.get<int64_t>();
    if (x < std::numeric_limits<int>::min() || x > std::numeric_limits<int>::max())
      fail(field, "value " + v.dump() + " is out of range");
    return x;
  }
  int positive_int(const std::string& field) const {
    int64_t x = integer(field);
    if (x <= 0) fail(field, "must be positive, got " + std::to_string(x));
    return static_cast<int>(x);
  }
  int required_positive_int(const std::string& field) const {
    if (!obj_.contains(field)) fail(field, "missing (required)");
    if (obj_[field].is_null()) fail(field, "expected an integer, got null");
    return positive_int(field);
  }
  double number(const std::string& field) const {
    const nlohmann::json& v = obj_[field];
    if (!v.is_number()) fail(field, "expected a number, got " + describe(v));
    double x = v.get<double>();
    if (!std::isfinite(x)) fail(field, "must be finite");
    return x;
  }
  double positive_number(const std::string& field) const {
    double x = number(field);
    if (!(x > 0)) fail(field, "must be positive, got " + obj_[field].dump());
    return x;
  }
  bool boolean(const std::string& field) const {
    const nlohmann::json& v = obj_[field];
    if (!v.is_boolean()) fail(field, "expected true or false, got " + describe(v));
    return v.get<bool>();
  }
  std::string string(const std::string& field) const {
    const nlohmann::json& v = obj_[field];
    if (!v.is_string()) fail(field, "expected a string, got " + describe(v));
    return v.get<std::string>();
  }
  std::vector<float> number_list(const std::string& field) const {
    const nlohmann::json& v = obj_[field];
    if (!v.is_array()) fail(field, "expected a list of numbers, got " + describe(v));
    std::vector<float> out;
    for (size_t i = 0; i < v.size(); ++i) {
      if (!v[i].is_number())
        fail(field, "expected a list of numbers, entry " + std::to_string(i) + " is " + describe(v[i]));
      double x = v[i].get<double>();
      if (!std::isfinite(x) || !(x > 0))
        fail(field, "entry " + std::to_string(i) + " must be a positive finite number, got " + v[i].dump());
      out.push_back(static_cast<float>(x));  // torch.tensor(list, dtype=float32)
    }
    return out;
  }

 private:
  const nlohmann::json& obj_;
  std::string source_;
  std::string prefix_;
};


}  // namespace phi3
