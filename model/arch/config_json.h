// A decoder's config.json -> ModelConfig (runtime/config.h), validated (architecture, required
// fields, types, consistent sizes) by the common fields and then by the family description it
// names (architecture.h); every error names config.json and the field.
#pragma once
#include <string>

#include "runtime/config.h"

namespace phi3 {

// Any supported family (model/arch/); errors name the file and the field.
ModelConfig parse_config_json(const std::string& text, const std::string& source = "config.json");
ModelConfig load_config(const std::string& model_dir);  // reads model_dir/config.json

}  // namespace phi3
