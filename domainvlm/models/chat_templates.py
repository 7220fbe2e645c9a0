"""Chat templates of the real models each family is named after, for randomly initialised ones.

Every template accepts plain-string content or lists of {"type": "image"|"text"} items, and
wraps each assistant answer plus its end-of-turn token in {% generation %} so
return_assistant_tokens_mask works.
"""

_ITEMS = (
    "{%- set items = [{'type': 'text', 'text': message['content']}] if message['content'] is string"
    " else message['content'] -%}"
    "{%- set text = items | selectattr('type', 'equalto', 'text') | map(attribute='text')"
    " | join(' ') -%}"
    "{%- set n_images = items | selectattr('type', 'equalto', 'image') | list | length -%}"
)
# llava-hf/llava-1.5-7b-hf (Vicuna v1): "USER: <image>\n{q} ASSISTANT: {a}</s>".
LLAVA = (
    "{%- for message in messages -%}" + _ITEMS + "{%- if message['role'] == 'system' -%}"
    "{{ text + ' ' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ 'ASSISTANT: ' }}{% generation %}{{ text + '</s>' }}{% endgeneration %}"
    "{%- else -%}"
    "{{ message['role'].upper() + ': ' + '<image>\n' * n_images + text + ' ' }}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)
# llava-hf/llava-v1.6-mistral-7b-hf: "[INST] <image>\n{q} [/INST] {a}</s>" (the generation
# prompt is implicit, as in the original).
LLAVA_NEXT = (
    "{%- for message in messages -%}" + _ITEMS + "{%- if message['role'] == 'system' -%}"
    "{{ '<<SYS>>\n' + text + '\n<</SYS>>\n\n' }}"
    "{%- elif message['role'] == 'user' -%}"
    "{{ '[INST] ' + '<image>\n' * n_images + text + ' [/INST]' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ ' ' }}{% generation %}{{ text + '</s>' }}{% endgeneration %}"
    "{%- endif -%}{%- endfor -%}"
)
# Qwen/Qwen2-VL-2B-Instruct (ChatML with a default system prompt).
QWEN = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{%- endif -%}"
    "{%- set items = [{'type': 'text', 'text': message['content']}] if message['content'] is string"
    " else message['content'] -%}"
    "{%- set ns = namespace(body='') -%}"
    "{%- for item in items -%}"
    "{%- if item['type'] == 'image' or 'image' in item -%}"
    "{%- set ns.body = ns.body + '<|vision_start|><|image_pad|><|vision_end|>' -%}"
    "{%- elif 'text' in item -%}{%- set ns.body = ns.body + item['text'] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{ ns.body + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{%- else -%}{{ ns.body + '<|im_end|>\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)
# HuggingFaceTB/SmolVLM-Instruct (Idefics3): "<|im_start|>User:<image>{q}<end_of_utterance>\n
# Assistant: {a}<end_of_utterance>\n".
IDEFICS3 = (
    "{{ '<|im_start|>' }}{%- for message in messages -%}"
    + _ITEMS
    + "{{ message['role'] | capitalize }}"
    "{{ ':' if items and items[0]['type'] == 'image' else ': ' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{ text + '<end_of_utterance>' }}{% endgeneration %}{{ '\n' }}"
    "{%- else -%}"
    "{%- for item in items -%}"
    "{{ item['text'] if item['type'] == 'text' else '<image>' }}"
    "{%- endfor -%}{{ '<end_of_utterance>\n' }}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
)

# meta-llama/Llama-3.2-11B-Vision-Instruct, without its optional system and tool blocks. The
# turn ends with <|eot_id|>: a special token the tokenizer does not name (its eos is
# <|end_of_text|>), as in the original.
MLLAMA = (
    "{{- bos_token }}{%- for message in messages -%}" + _ITEMS
    + "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{ text + '<|eot_id|>' }}{% endgeneration %}"
    "{%- else -%}{{ '<|image|>' * n_images + text + '<|eot_id|>' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif -%}"
)

