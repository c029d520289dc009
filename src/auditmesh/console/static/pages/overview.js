import { h } from "../dom.js";

export async function renderOverview(main) {
  main.append(h("h1", {}, "overview"));
}
