import { h } from "../dom.js";

export async function renderReplay(main) {
  main.append(h("h1", {}, "replay"));
}
