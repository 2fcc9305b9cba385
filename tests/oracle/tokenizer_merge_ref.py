"""Reference vocabulary merge: Chinese-LLaMA-Alpaca's merge_tokenizers.py method with Google's protobuf
classes from the sentencepiece package (every piece of ADD that BASE lacks is appended with score 0).

usage: tokenizer_merge_ref.py BASE ADD OUT   writes OUT (a .model) and prints the piece count
"""
import sys

from sentencepiece import sentencepiece_model_pb2 as sp_pb2_model

base_path, add_path, out_path = sys.argv[1:4]
llama = sp_pb2_model.ModelProto()
llama.ParseFromString(open(base_path, "rb").read())
other = sp_pb2_model.ModelProto()
other.ParseFromString(open(add_path, "rb").read())

llama_tokens = set(p.piece for p in llama.pieces)
for p in other.pieces:
    if p.piece not in llama_tokens:
        new_p = sp_pb2_model.ModelProto().SentencePiece()
        new_p.piece = p.piece
        new_p.score = 0
        llama.pieces.append(new_p)

with open(out_path, "wb") as f:
    f.write(llama.SerializeToString())
print(len(llama.pieces))
