#include <algorithm>
#include <map>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/engine/tokenizer_merge.h"
#include "nlohmann/json.hpp"

namespace mergeserve {
namespace {

// The named templates, the same text as mergekit's _data/chat_templates/
// (a6e4028), so `chat_template: chatml` gives what mergekit gives.
const std::map<std::string, std::string>& NamedTemplates() {
  static const auto* kTemplates = new std::map<std::string, std::string>{
      {"alpaca",
       R"TPL({{ (messages|selectattr('role', 'equalto', 'system')|list|last).content|trim if (messages|selectattr('role', 'equalto', 'system')|list) else '' }}

{% for message in messages %}
{% if message['role'] == 'user' %}
### Instruction:
{{ message['content']|trim -}}
{% if not loop.last %}


{% endif %}
{% elif message['role'] == 'assistant' %}
### Response:
{{ message['content']|trim -}}
{% if not loop.last %}


{% endif %}
{% elif message['role'] == 'user_context' %}
### Input:
{{ message['content']|trim -}}
{% if not loop.last %}


{% endif %}
{% endif %}
{% endfor %}
{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}
### Response:
{% endif %}
)TPL"},
      {"chatml",
       R"TPL({% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}
{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}
)TPL"},
      {"exaone",
       R"TPL({% for message in messages %}
    {% if loop.first and message['role'] != 'system' %}
        {{ '[|system|][|endofturn|]\n' }}
    {% endif %}
    {{ '[|' + message['role'] + '|]' + message['content'] }}
    {% if message['role'] == 'user' %}
        {{ '\n' }}
    {% else %}
        {{ '[|endofturn|]\n' }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
    {{ '[|assistant|]' }}
{% endif %}
)TPL"},
      {"llama3",
       R"TPL({% set loop_messages = messages %}
{% for message in loop_messages %}
{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}
{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}
{{ content }}
{% endfor %}
{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}
)TPL"},
      {"mistral",
       R"TPL({%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\n\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
)TPL"},
  };
  return *kTemplates;
}

// A model's own template: tokenizer_config.json's chat_template (a string,
// or a list of {name, template} whose "default" counts), else
// chat_template.jinja.
std::string ModelTemplate(const ModelFolder& f) {
  auto text = f.ReadSideFile("tokenizer_config.json");
  if (text.ok()) {
    auto j = nlohmann::json::parse(*text, nullptr, false);
    if (j.is_object() && j.contains("chat_template")) {
      const auto& t = j["chat_template"];
      if (t.is_string()) return t.get<std::string>();
      if (t.is_array()) {
        for (const auto& e : t) {
          if (e.is_object() && e.contains("name") && e["name"].is_string() &&
              e["name"].get<std::string>() == "default" &&
              e.contains("template") && e["template"].is_string()) {
            return e["template"].get<std::string>();
          }
        }
      }
    }
  }
  auto jinja = f.ReadSideFile("chat_template.jinja");
  return jinja.ok() ? *jinja : "";
}

std::string Trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

}  // namespace

absl::StatusOr<std::string> ResolveChatTemplate(
    const std::string& chat_template,
    const std::vector<const ModelFolder*>& folders) {
  if (chat_template == "auto") {
    // The plurality template among the models, the first seen on a tie
    // (mergekit's Counter.most_common).
    std::vector<std::pair<std::string, int>> counts;
    for (const ModelFolder* f : folders) {
      const std::string t = Trim(ModelTemplate(*f));
      if (t.empty()) continue;
      auto it = std::find_if(counts.begin(), counts.end(),
                             [&](const auto& c) { return c.first == t; });
      if (it == counts.end()) {
        counts.emplace_back(t, 1);
      } else {
        ++it->second;
      }
    }
    std::string best;
    int most = 0;
    for (const auto& [t, c] : counts) {
      if (c > most) {
        best = t;
        most = c;
      }
    }
    return best;
  }
  const auto& named = NamedTemplates();
  if (auto it = named.find(chat_template); it != named.end()) {
    return it->second;
  }
  if (chat_template.size() < 20 ||
      chat_template.find('{') == std::string::npos) {
    std::vector<std::string> names;
    for (const auto& [name, text] : named) names.push_back(name);
    return absl::InvalidArgumentError(absl::StrCat(
        "chat_template '", chat_template, "' is neither a named template (",
        absl::StrJoin(names, ", "), ", auto) nor a Jinja template"));
  }
  return chat_template;
}

}  // namespace mergeserve
